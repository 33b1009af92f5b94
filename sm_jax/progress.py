"""Progress of long work: a tqdm bar on a terminal, plain timed lines when the output goes to a file or a pipe."""
from __future__ import annotations

import sys
import time
from typing import Any


def interactive() -> bool:
    """True when both stdout and stderr are terminals (a bar can redraw itself there)."""
    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts `done` out of `total` units of work and shows it.

    On a terminal (stdout and stderr both ttys) a tqdm bar with rate and ETA. Otherwise (a batch job's log file,
    `| tee`, a pipe) one line on stdout at the first update, then at most every `every` seconds, and at the end:
    `<desc> <done>/<total> | <facts> | <s per unit> | ETA <h:mm:ss> | elapsed <h:mm:ss>`. The rate (and so the ETA)
    starts at the second update of this sitting: the first includes compilation.

    Args:
      total: units of work (iterations, networks).
      initial: units already done (a resumed run).
      desc: the name printed first, e.g. "dsa ipc10 iteration".
      unit: what one unit is, for the rate ("it", "net").
      enabled: False shows nothing.
      every: seconds between plain lines.
      bar: force the bar (True) or the lines (False); None decides from the terminal.
    """

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "it", enabled: bool = True,
                 every: float = 30.0, bar: bool | None = None, stream=None):
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.enabled = enabled
        self.every = every
        self.stream = stream
        self.facts: dict[str, Any] = {}
        self._first: tuple[float, int] | None = None  # (time, done) at the first update: the rate's origin
        self._start = time.monotonic()
        self._last_line: float | None = None  # when the last plain line was printed
        self._printed = initial
        self._bar = None
        if enabled and (interactive() if bar is None else bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

    def seconds_per_unit(self) -> float | None:
        """Mean seconds per unit since the first update of this sitting (None before the second update)."""
        if self._first is None or self.done <= self._first[1]:
            return None
        t0, n0 = self._first
        return (time.monotonic() - t0) / (self.done - n0)

    def eta(self) -> float | None:
        """Seconds left at the current rate (None until the rate is known: the first update includes compilation)."""
        rate = self.seconds_per_unit()
        return None if rate is None else rate * (self.total - self.done)

    def update(self, done: int, **facts: Any) -> None:
        """Records that `done` units are finished (absolute count), with facts to show (losses, ...)."""
        if not self.enabled:
            return
        self.facts.update(facts)
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        step = done - self.done
        self.done = done
        if self._bar is not None:
            self._bar.update(step)
            if facts:
                self._bar.set_postfix({k: _fmt(v) for k, v in facts.items()}, refresh=False)
            return
        if self._last_line is None or now - self._last_line >= self.every or done >= self.total:
            self._line(now)

    def line(self) -> str:
        """The plain progress line for the current state."""
        parts = [f"{self.desc} {self.done}/{self.total}".strip()]
        if self.facts:
            parts.append(" ".join(f"{k} {_fmt(v)}" for k, v in self.facts.items()))
        rate, eta = self.seconds_per_unit(), self.eta()
        if rate is not None:
            parts.append(f"{rate:.3g} s/{self.unit}")
        if eta is not None and self.done < self.total:
            parts.append(f"ETA {_duration(eta)}")
        parts.append(f"elapsed {_duration(time.monotonic() - self._start)}")
        return " | ".join(parts)

    def _line(self, now: float) -> None:
        print(self.line(), file=self.stream or sys.stdout, flush=True)
        self._last_line = now
        self._printed = self.done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._printed != self.done:
            self._line(time.monotonic())
