"""Stop signals, waiting on the device with a deadline, and progress lines (in-process, no run)."""
import io
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import pytest

from sm_jax import progress as progress_mod
from sm_jax.lifecycle import StopSignals, Waiter, exit_code
from sm_jax.progress import Progress

main_thread_only = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                      reason="signal handlers can only be installed in the main thread")


@main_thread_only
def test_first_signal_requests_a_stop_second_sigint_aborts_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in StopSignals.SIGNALS}
    with StopSignals() as stop:
        assert not stop.requested and stop.deadline(5.0) == float("inf")
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
        time.sleep(0.05)
        assert stop.requested and stop.name == "SIGTERM" and exit_code(stop.signum) == 143
        assert stop.deadline(5.0) == pytest.approx(stop.at + 5.0)
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM (job script + scheduler) is ignored
        time.sleep(0.05)
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C is the user insisting
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        assert stop.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in StopSignals.SIGNALS} == before


@jax.jit
def _slow(x, n):
    return jax.lax.fori_loop(0, n, lambda i, y: jnp.tanh(y @ y) * 0.5, x)


def test_waiter_returns_results_and_gives_up_on_a_stop_past_its_deadline():
    x = jnp.eye(256) * 0.5
    waiter = Waiter(poll=0.05)
    stop = StopSignals()  # not entered: requested by hand
    short = _slow(x, 2)
    assert waiter.wait(short, stop, grace=0.0) and short.is_ready()
    n = 1
    while True:  # find a length that runs for over a second on this machine (compiled once: n is traced)
        t0 = time.monotonic()
        _slow(x, n).block_until_ready()
        if time.monotonic() - t0 > 0.25:
            break
        n *= 4
    n *= 8
    long = _slow(x, n)
    stop.signum, stop.at = signal.SIGTERM, time.monotonic()
    t0 = time.monotonic()
    assert not waiter.wait(long, stop, grace=0.1)
    assert time.monotonic() - t0 < 1.0 and not long.is_ready()  # gave up while the device was still busy
    stop.at = time.monotonic()
    assert waiter.wait(long, stop, grace=600.0)  # a long grace waits it out
    waiter.close()


def test_progress_lines_rate_and_eta(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    p = Progress(10, initial=2, desc="dc ipc10 iteration", every=5.0, bar=False, stream=out)
    clock[0] = 110.0  # iteration 3, with compilation: 10 s
    p.update(3, loss_all=1.23456, lambda_=0.5)
    clock[0] = 112.0
    p.update(4, loss_all=1.0)  # 2 s after the last line: quiet
    clock[0] = 116.0
    p.update(5, loss_all=0.5)  # 3 s per iteration since the first update; 5 left -> 15 s
    p.close()  # nothing new since the last line
    lines = out.getvalue().splitlines()
    assert lines == ["dc ipc10 iteration 3/10 | loss_all 1.235 lambda_ 0.5 | elapsed 0:10",
                     "dc ipc10 iteration 5/10 | loss_all 0.5 lambda_ 0.5 | 3 s/it | ETA 0:15 | elapsed 0:16"]
    clock[0] = 117.0
    p.update(6)
    p.close()  # the final state is always printed
    assert out.getvalue().splitlines()[-1].startswith("dc ipc10 iteration 6/10 |")
    quiet = io.StringIO()
    Progress(3, enabled=False, bar=False, stream=quiet).update(3)
    assert quiet.getvalue() == ""
