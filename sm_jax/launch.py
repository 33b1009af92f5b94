"""A local multi-process launcher, in the manner of `torchrun --standalone`: N processes of one sm_jax command on
this machine, each with D CPU devices, joined by JAX's distributed runtime (a free port on 127.0.0.1, gloo
collectives). For development and tests; on a cluster the batch system starts the processes (docs/operations.md).
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from sm_jax.errors import UserError

MODULES = ("experiments.cifar10", "experiments.condense", "experiments.evaluate")  # the first is the default


class LaunchError(UserError):
    """Launcher flags that cannot start the processes (one line, user-facing)."""


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int, base: dict | None = None) -> dict[str, str]:
    """The environment of one process: the CPU platform with `devices` devices (other XLA flags are kept)."""
    env = dict(os.environ if base is None else base)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([f"--xla_force_host_platform_device_count={devices}", *flags])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _pump(stream, out, prefix: str, lock: threading.Lock) -> None:
    for line in iter(stream.readline, ""):
        with lock:
            out.write(prefix + line)
            out.flush()
    stream.close()


def _status(code: int) -> int:
    """A child's exit status as a shell reports it (a signal's death: 128 + signal)."""
    return 128 - code if code < 0 else code


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"ended by {signal.Signals(-code).name}"
        except ValueError:
            return f"ended by signal {-code}"
    return f"exited with status {code}"


def launch(processes: int, devices_per_process: int, args: Sequence[str], module: str = MODULES[0],
           grace: float = 90.0, poll: float = 0.1) -> int:
    """Runs `python -m module *args` as `processes` processes of one run and waits for them.

    Each process's output lines are prefixed with `[rank] `. SIGINT / SIGTERM to the launcher are forwarded to every
    process (they save a checkpoint and stop together). When a process fails, the others get SIGTERM, then SIGKILL
    `grace` seconds later if still running.

    Returns:
      0 if every process finished, else the first non-zero exit status (a signal's death: 128 + signal).
    """
    if processes < 1 or devices_per_process < 1:
        raise LaunchError("--processes and --devices-per-process must be positive")
    if module not in MODULES:
        raise LaunchError(f"--module {module}: one of {', '.join(MODULES)}")
    given = {a.split("=")[0] for a in args}
    clash = sorted(given & {"--coordinator", "--num-processes", "--process-id"})
    if clash:
        raise LaunchError(f"{clash[0]} is the launcher's to set")
    port, lock = free_port(), threading.Lock()
    children, pumps = [], []
    for rank in range(processes):
        cmd = [sys.executable, "-m", module, *args, "--coordinator", f"127.0.0.1:{port}",
               "--num-processes", str(processes), "--process-id", str(rank)]
        child = subprocess.Popen(cmd, env=process_env(devices_per_process), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, start_new_session=True)
        children.append(child)
        for stream, out in ((child.stdout, sys.stdout), (child.stderr, sys.stderr)):
            t = threading.Thread(target=_pump, args=(stream, out, f"[{rank}] ", lock), daemon=True)
            t.start()
            pumps.append(t)

    def forward(signum, frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    first, killed_at = None, None
    try:
        while any(c.poll() is None for c in children):
            for rank, c in enumerate(children):
                code = c.poll()
                if code not in (None, 0) and first is None:
                    first = _status(code)
                    with lock:
                        print(f"launch: process {rank} {_describe(code)}; ending the others", file=sys.stderr,
                              flush=True)
                    forward(signal.SIGTERM, None)
                    killed_at = time.monotonic() + grace
            if killed_at is not None and time.monotonic() > killed_at:
                for c in children:
                    if c.poll() is None:
                        c.kill()
            time.sleep(poll)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for t in pumps:
            t.join(timeout=5)
    if first is None:
        codes = [_status(c.returncode) for c in children if c.returncode]
        first = codes[0] if codes else 0
    return first
