"""Orbax checkpoints of a condensation run: state, partitions and the config as JSON metadata."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from sm_jax.errors import UserError


class CheckpointError(UserError):
    """No checkpoint, or one that cannot be restored (one line, user-facing)."""


class Checkpointer:
    """A CheckpointManager under <workdir>/checkpoints with two items: 'state' (arrays) and 'meta' (JSON).

    Saves are asynchronous: `save` returns once orbax holds the arrays and writes them in a background thread
    (callers pass host copies, which nothing mutates afterwards); `wait` and `close` block until it is done.
    Orbax finalises each step by an atomic rename, so a process killed at any moment leaves only complete
    checkpoints (an unfinished temporary directory is ignored).
    """

    def __init__(self, workdir: str | Path, max_to_keep: int = 2, create: bool = True):
        self.directory = Path(workdir).absolute() / "checkpoints"
        if not create and not self.directory.is_dir():
            raise CheckpointError(f"{Path(workdir)} holds no checkpoints (expected {self.directory})")
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "meta"),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                                 enable_async_checkpointing=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts writing (state pytree, meta dict) as checkpoint `step`, replacing an existing one of that step."""
        self.manager.wait_until_finished()  # one save at a time
        if step in self.manager.all_steps():
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is on disk."""
        self.manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        """(step, meta) of checkpoint `step` (latest if None)."""
        step = self._resolve(step)
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} is unreadable ({type(e).__name__})") from None
        return step, meta

    def restore(self, step: int | None, target: Any) -> Any:
        """Restores the state of checkpoint `step` (latest if None) into the structure of `target`."""
        step = self._resolve(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:
            raise CheckpointError(f"checkpoint {step} in {self.directory} cannot be restored "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None

    def _resolve(self, step: int | None) -> int:
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoints in {self.directory}")
        if step is None:
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"no checkpoint {step} in {self.directory}; available: {sorted(steps)}")
        return step

    def close(self) -> None:
        self.manager.close()
