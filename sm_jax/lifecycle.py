"""A run's life on a cluster: stop signals (Ctrl-C, SIGTERM before preemption), waiting with a deadline, exit codes.

Exit codes of `python -m experiments.cifar10` / `experiments.evaluate`:

  0    finished
  2    bad input (one `error:` line)
  3    diverged: a non-finite loss or image gradient (one `error:` line; the last good checkpoint is kept)
  4    another process of a multi-process run was lost (one `error:` line naming it; the last checkpoint is kept)
  130  stopped by Ctrl-C (SIGINT) after saving a checkpoint; also a second Ctrl-C, which aborts at once
  143  stopped by SIGTERM (preemption, a batch system's time limit) after saving a checkpoint
"""
from __future__ import annotations

import concurrent.futures
import signal
import time
from typing import Any

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by signal `signum`: 128 + signum (130 SIGINT, 143 SIGTERM)."""
    return 128 + int(signum)


class Stopped(Exception):
    """The run stopped on a signal after saving what it had; `code` is the exit code.

    `abandoned` is True when a computation was still running on the device (the process should then end without
    waiting for it).
    """

    def __init__(self, signum: int, message: str, abandoned: bool = False):
        super().__init__(message)
        self.code = exit_code(signum)
        self.abandoned = abandoned


class Diverged(Exception):
    """A non-finite loss or image gradient (one line, user-facing)."""


class StopSignals:
    """Context manager turning the first SIGINT or SIGTERM into a stop request checked at safe points.

    A second Ctrl-C raises KeyboardInterrupt at once (the user insists); further SIGTERMs are ignored (a batch
    system may send one to every process of the job, and a job script may forward its own). Outside the main
    thread signals cannot be caught, and nothing is installed.

    Blocks nest: a driver running several runs (`--experiments N`, a study) holds one around its loop and each run
    its own. A request the enclosing block already holds is the inner block's from its start, and one the inner
    block received but did not act on (it came after the run's last check: its evaluation, its files) passes to
    the enclosing block on exit, so the driver stops before its next run instead of losing the request.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.at: float | None = None  # time.monotonic() of the first signal
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def deadline(self, grace: float) -> float:
        """When a stop requested now must have saved: the signal's time plus `grace` seconds (inf if none)."""
        return float("inf") if self.at is None else self.at + grace

    def adopt(self, signum: int) -> None:
        """Takes another process's stop request (sm_jax.distributed: every process stops alike)."""
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()

    def _handler(self, signum, frame):
        if self.signum is None:
            self.signum, self.at = signum, time.monotonic()
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    def _enclosing(self) -> StopSignals | None:
        """The block this one is nested in: the owner of the handler it replaced, if that is a StopSignals."""
        owner = getattr(self._previous.get(signal.SIGTERM), "__self__", None)
        return owner if isinstance(owner, StopSignals) else None

    def __enter__(self) -> StopSignals:
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                break
        outer = self._enclosing()
        if outer is not None and outer.requested and not self.requested:
            self.signum, self.at = outer.signum, outer.at
        return self

    def __exit__(self, *exc) -> bool:
        outer = self._enclosing()
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()
        if outer is not None and self.requested and not outer.requested:
            outer.signum, outer.at = self.signum, self.at
        return False


class Waiter:
    """Waits for device results while staying responsive to signals.

    `jax.block_until_ready` blocks in C++, where Python signal handlers cannot run; here a helper thread blocks
    instead and the main thread waits on a future, which signals interrupt (PEP 475), so a stop request is seen
    within `poll` seconds even while a long iteration runs.
    """

    def __init__(self, poll: float = 0.25):
        self.poll = poll
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sm_jax-wait")

    def wait(self, tree: Any, stop: StopSignals, grace: float) -> bool:
        """Blocks until every array of `tree` is computed; returns False instead when a stop was requested and its
        deadline (`grace` seconds after the signal) passed first."""
        import jax  # here, not at the top: the exit codes and signals above serve the launcher, which has no JAX

        future = self._pool.submit(jax.block_until_ready, tree)
        while True:
            try:
                future.result(timeout=self.poll)
                return True
            except concurrent.futures.TimeoutError:
                if stop.requested and time.monotonic() >= stop.deadline(grace):
                    return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
