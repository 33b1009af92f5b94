"""What every command line shares: flags generated from a dataclass's fields and their metadata, the flags of
several processes, and `guard`, which turns errors and stops into exit codes and one-line messages."""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys

from sm_jax.config import Config


def named_or_int(**words: int):
    """An argparse type: one of `words` (-> its value) or an integer."""

    def parse(text: str) -> int:
        if text in words:
            return words[text]
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {', '.join(words)} or an integer, got {text!r}") from None
    return parse


# argparse types of the int fields with named values (Config's `words`: --class-chunk auto, --syn-chunk fused, ...)
_SPECIAL_TYPES = {f.name: named_or_int(**f.metadata["words"]) for f in dataclasses.fields(Config)
                  if f.metadata["words"]}
class_chunk, syn_chunk, eval_parallel = (_SPECIAL_TYPES[n] for n in ("class_chunk", "syn_chunk", "eval_parallel"))

_TYPES = {"int": int, "float": float, "str": str, "str | None": str, "int | None": int}


def add_config_flags(p: argparse.ArgumentParser, names=None, required=(), cls=Config) -> None:
    """--flags for the fields `names` (default: all) of the dataclass `cls` (Config, distributed.Processes), each
    with its metadata's help and choices; defaults are None (the preset's value), so that only the flags given
    override it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names or [n for n, f in fields.items() if f.metadata.get("flag", True)]:
        f, meta = fields[name], fields[name].metadata
        flag = "--" + name.replace("_", "-")
        text = meta["help"]
        if meta["choices"] is not None:
            text += f" (one of {', '.join(meta['choices']())})"
        if f.type == "bool" and f.default:  # on unless turned off
            p.add_argument("--no-" + flag[2:], dest=name, action="store_const", const=False, help=text)
        elif f.type == "bool":
            p.add_argument(flag, action="store_const", const=True, help=text)
        else:
            p.add_argument(flag, type=_SPECIAL_TYPES.get(name, _TYPES[f.type]), required=name in required, help=text,
                           metavar=name.upper() if name not in required else None)


def add_process_flags(p: argparse.ArgumentParser) -> None:
    """The flags of distributed.Processes (a multi-process run), in their own group."""
    from sm_jax.distributed import Processes

    add_config_flags(p.add_argument_group("several processes (hosts): see docs/operations.md"), cls=Processes)


def processes_from_flags(args: argparse.Namespace):
    from sm_jax.distributed import Processes

    names = {f.name for f in dataclasses.fields(Processes)}
    return Processes(**{k: v for k, v in vars(args).items() if k in names and v is not None})


def guard(fn, processes=None, compile_cache: bool = True):
    """Runs fn() with the exit codes of `sm_jax.lifecycle`: user errors and divergence become one `error:` line
    (2, 3); a stop on SIGINT / SIGTERM exits 130 / 143 after the run saved its checkpoint. With `processes`
    (distributed.Processes), joins a multi-process run first, and a Watchdog ends this process (4) when another
    is lost. `compile_cache`: the persistent compilation cache (off for a command that only compiles for a device
    that is not here: such programs can be neither stored nor read back)."""
    from sm_jax import backend, distributed, lifecycle
    from sm_jax.data import default_cache_dir
    from sm_jax.errors import UserError

    # a batch job's log is a file: print each line when it is written, not when a buffer fills (a stream that is
    # not a file, such as a notebook's or a redirect to a StringIO, has no buffer to configure)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    watchdog = None

    def leave(code: int, message: str | None = None, file=sys.stderr) -> None:
        if message is not None:
            print(message, file=file, flush=True)
        if watchdog is not None and code not in (0, 130, 143):
            # alone in failing: skip JAX's shutdown barrier, where the others would wait for it; their Watchdog
            # names this process once it is gone
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        if watchdog is not None:
            watchdog.close(finished=True)
        sys.exit(code)

    try:
        if processes is not None and distributed.initialize(processes):
            watchdog = distributed.Watchdog(processes.peer_timeout)
        if compile_cache:
            backend.enable_compilation_cache(default_cache_dir() / "xla")
        out = fn()
        if watchdog is not None:
            watchdog.close(finished=True)
        return out
    except UserError as e:
        leave(lifecycle.EXIT_USER_ERROR, f"error: {e}")
    except lifecycle.Diverged as e:
        leave(lifecycle.EXIT_DIVERGED, f"error: {e}")
    except lifecycle.Stopped as e:
        if e.abandoned:  # an iteration still runs on the device: end now, the checkpoint is written and closed
            print(e, flush=True)
            sys.stderr.flush()
            os._exit(e.code)
        if watchdog is not None:  # SLURM signals every process, some after the stop they agreed on and saved
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        leave(e.code, str(e) if distributed.is_writer() else None, sys.stdout)
    except Exception:
        if watchdog is not None:  # a collective may fail because a peer is gone: let the watchdog name it first
            watchdog.settle()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, not after the device finishes its iteration
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(lifecycle.exit_code(signal.SIGINT))


