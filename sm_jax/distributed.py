"""Several processes (one per host, or several on one machine) as one run, on JAX's distributed runtime.

`initialize(Processes(...))` calls `jax.distributed.initialize` before anything touches a device: from explicit
flags, from the environment of a multi-task SLURM step or an Open MPI job (JAX's own cluster detection), or, with
`--distributed`, from whatever JAX detects (a TPU slice). `jax.devices()` then lists every process's devices and a
run's mesh spans them all (sharding.make_mesh).

Every process runs the same program on the same data, so the decisions that branch it must be the same everywhere:
`agree_max` (a stop requested in one process stops all at the same iteration) and `broadcast` (what process 0 read
from the workdir) make them collectively. Process 0 alone writes the run's files (`is_writer`); every process takes
part in orbax's checkpoints and in every collective.

A process that dies (SIGKILL, a lost node) leaves the others blocked in a collective. JAX's coordination service
would end them after its heartbeat timeout with a C++ fatal error; `Watchdog` ends them first, with one `error:`
line naming the lost process: every process publishes a counter in the coordination service's key-value store and
watches the others'.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

from sm_jax.errors import UserError
from sm_jax.lifecycle import EXIT_PEER_LOST

_PREFIX = "sm_jax/alive/"
_DONE = "done"


class DistributedError(UserError):
    """Process flags that cannot start a multi-process run (one line, user-facing)."""


def _field(default: Any, help: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": None})  # what cli's flags read


@dataclasses.dataclass(frozen=True)
class Processes:
    """How this process joins a multi-process run (none of it changes the run's results)."""

    coordinator: str | None = _field(None, "host:port of the coordinator, which process 0 starts (with "
                                     "--num-processes and --process-id; default: detected from a SLURM step or an "
                                     "Open MPI job)")
    num_processes: int | None = _field(None, "processes of the run (one per host, or several on one machine)")
    process_id: int | None = _field(None, "this process's index, 0 to --num-processes - 1 (process 0 writes the "
                                    "run's files)")
    distributed: bool = _field(False, "join a multi-process run described by the environment, as JAX's cluster "
                               "detection finds it (a TPU slice: the same command on every worker)")
    peer_timeout: float = _field(60.0, "seconds without a sign of life from another process before this one ends "
                                 "with an error (a killed or lost process)")

    def explicit(self) -> bool:
        return self.coordinator is not None or self.num_processes is not None or self.process_id is not None


def detected() -> str | None:
    """The launcher whose environment describes several processes (SLURM step, Open MPI job), or None."""
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:  # set by srun in a job step, not in the batch script
        return "SLURM"
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "Open MPI"
    return None


def initialize(p: Processes) -> bool:
    """Joins the multi-process run `p` describes (explicit flags, a detected launcher or --distributed); a single
    process otherwise. Call before anything touches a device.

    Returns:
      whether a multi-process runtime was initialised (then a Watchdog should run).
    Raises:
      DistributedError: incomplete or inconsistent flags, or a coordinator that cannot be reached.
    """
    if p.explicit():
        missing = [f"--{n.replace('_', '-')}" for n in ("coordinator", "num_processes", "process_id")
                   if getattr(p, n) is None]
        if missing:
            raise DistributedError(f"{', '.join(missing)} missing: --coordinator, --num-processes and "
                                   "--process-id go together")
        if not 0 <= p.process_id < p.num_processes:
            raise DistributedError(f"--process-id {p.process_id} is not in 0..{p.num_processes - 1}")
        if p.num_processes == 1:
            return False
        kwargs = {"coordinator_address": p.coordinator, "num_processes": p.num_processes, "process_id": p.process_id}
    elif p.distributed or detected():
        kwargs = {}
    else:
        return False
    if p.peer_timeout <= 0:
        raise DistributedError("--peer-timeout must be positive")
    # CPU devices of several processes talk through gloo (the default CPU client has no cross-process collectives);
    # GPU and TPU clients ignore this setting
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        # JAX's own heartbeat ends a process with a C++ fatal error: it must come after the Watchdog's error line
        jax.distributed.initialize(**kwargs, heartbeat_timeout_seconds=int(2 * p.peer_timeout) + 10)
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"cannot join the multi-process run: {first[:300]}") from None
    return True


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def agree_max(value: int) -> int:
    """The largest of every process's `value` (a collective)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def stop_agreed(stop) -> bool:
    """Whether a stop was requested in any process (a collective over `stop`, a lifecycle.StopSignals); a process
    that received no signal adopts the others', so that every process stops at the same point with the same exit
    code."""
    signum = agree_max(stop.signum or 0)
    if signum and not stop.requested:
        stop.adopt(signum)
    return bool(signum)


def broadcast(value: bool) -> bool:
    """Process 0's `value`, in every process (a collective): for decisions read from the shared workdir."""
    if jax.process_count() == 1:
        return bool(value)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(value), np.int32)))


def _client():
    # the coordination service's client, which multihost_utils also uses; the public API exposes no handle to it
    from jax._src import distributed

    return distributed.global_state.client


class Watchdog:
    """Ends this process with an `error:` line (exit EXIT_PEER_LOST) when another process of the run has shown no
    sign of life for `timeout` seconds, or the coordinator (in process 0) cannot be reached.

    A daemon thread publishes this process's counter every `timeout / 10` seconds and reads the others'; it runs
    while a computation blocks the main thread in a collective, which a lost peer would never complete.
    """

    def __init__(self, timeout: float, log=None):
        self.timeout = timeout
        self.pid, self.n = jax.process_index(), jax.process_count()
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sm_jax-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client, beat = _client(), 0
        now = time.monotonic()
        seen = {j: (None, now) for j in range(self.n) if j != self.pid}  # peer -> (last counter, when it changed)
        while not self._stop.wait(self.timeout / 10):
            beat += 1
            try:
                client.key_value_set(f"{_PREFIX}{self.pid}", str(beat), allow_overwrite=True)
                values = dict(client.key_value_dir_get(_PREFIX))
            except Exception:  # noqa: BLE001 - the coordinator's process is gone
                if not self._stop.is_set():
                    self._lost(0, "the coordinator cannot be reached")
                return
            now = time.monotonic()
            for j in seen:
                v = values.get(f"{_PREFIX}{j}")
                if v == _DONE:  # finished: it waits for the others at JAX's shutdown barrier
                    continue
                if v != seen[j][0]:
                    seen[j] = (v, now)
                elif now - seen[j][1] > self.timeout:
                    self._lost(j, f"no sign of life for {now - seen[j][1]:.0f} s")
                    return

    def _lost(self, j: int, why: str) -> None:
        self.log(f"error: process {j} of {self.n} was lost ({why}: killed, or its host failed); this process "
                 f"({self.pid}) ends; the last checkpoint is kept: rerun the same command on every process to resume")
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)

    def settle(self) -> None:
        """Waits long enough for a lost peer to be detected (this process then ends in the watchdog's thread)."""
        self._thread.join(1.5 * self.timeout)

    def close(self, finished: bool) -> None:
        """Stops watching; `finished`: this process ended normally (the others then stop watching it, while it
        waits for them at JAX's shutdown barrier)."""
        self._stop.set()
        if finished:
            try:
                _client().key_value_set(f"{_PREFIX}{self.pid}", _DONE, allow_overwrite=True)
            except Exception:  # noqa: BLE001 - the coordinator is gone: nobody is watching
                pass
