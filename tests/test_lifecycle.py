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


@main_thread_only
def test_nested_blocks_pass_a_stop_request_inward_at_entry_and_outward_at_exit():
    """A driver's block around several runs: a request the run's block did not act on (it came after the run's last
    check) reaches the driver; one the driver holds is the next run's from its start."""
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as outer:
        with StopSignals() as inner:
            assert not inner.requested
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert inner.requested and not outer.requested  # the innermost block takes the signal
        assert outer.requested and (outer.signum, outer.at) == (inner.signum, inner.at)
        assert signal.getsignal(signal.SIGTERM) == outer._handler
        with StopSignals() as later:
            assert later.requested and later.signum == signal.SIGTERM and later.at == outer.at
    assert signal.getsignal(signal.SIGTERM) == before
    with StopSignals() as alone:  # no enclosing block: nothing carried over
        assert not alone.requested


@main_thread_only
def test_experiments_stop_before_the_next_one_when_the_signal_came_after_a_runs_last_check(tmp_path, monkeypatch):
    """`--experiments 3`, SIGTERM while experiment 0 writes its final files: it is kept, aggregated, and the
    command exits 143 before experiment 1 (rather than going on until the batch system kills it)."""
    import json

    from sm_jax import repeats
    from sm_jax.config import Config
    from sm_jax.lifecycle import Stopped

    started = []

    class FinishingRun:  # Run's contract past its last check: the block holds the signal, execute returns
        def __init__(self, cfg, **_):
            self.cfg, self.workdir = cfg, cfg.workdir

        def execute(self):
            with StopSignals():
                started.append(self.cfg.seed)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            return {"accuracies": [0.5], "accuracy_mean": 0.5, "config": json.loads(self.cfg.to_json())}

    monkeypatch.setattr(repeats, "Run", FinishingRun)
    cfg = Config(method="dc", ipc=1, experiments=3, seed=7, workdir=str(tmp_path / "run"))
    with pytest.raises(Stopped, match="with 1 of 3 experiments done") as e:
        repeats.execute(cfg, data=object(), log=lambda s: None)
    assert e.value.code == 143 and started == [7]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["done"] == 1


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
