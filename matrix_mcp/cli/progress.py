"""The live progress line shared by `matrix-mcp demo` and `matrix-mcp work`.

In a terminal the line redraws in place; piped, each redraw is a line of its own (at most one per
`every` seconds), so logs stay readable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TextIO

BAR_WIDTH = 30


def progress_line(
    counts: Mapping[str, int], per_second: float | None = None, eta_seconds: float | None = None
) -> str:
    """`[###...] 12/15 complete · 1 generating · 2 pending · 0 failed`, plus throughput and ETA if given."""
    total = max(1, counts["total"])
    filled = round(BAR_WIDTH * (counts["complete"] + counts["failed"]) / total)
    line = (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {counts['complete']}/{counts['total']} complete · "
        f"{counts['generating']} generating · {counts['pending']} pending · {counts['failed']} failed"
    )
    if counts.get("blocked"):
        line += f" · {counts['blocked']} blocked"
    if per_second is not None:
        line += f" · {per_second:.1f} items/s"
    if eta_seconds is not None:
        line += f" · ETA {eta_seconds:.0f} s"
    return line


class LiveLine:
    """Prints progress lines and notes to `out`: redrawn in place on a terminal, else one per `every` s."""

    def __init__(self, out: TextIO, every: float = 5.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.every = every
        self._last = 0.0
        self._drawn = False

    def note(self, text: str) -> None:
        print(("\r\033[K" if self.tty and self._drawn else "") + text, file=self.out, flush=True)
        self._drawn = False

    def show(self, line: str, force: bool = False) -> None:
        if self.tty:
            print("\r\033[K" + line, end="", file=self.out, flush=True)
            self._drawn = True
            return
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.tty and self._drawn:
            print(file=self.out, flush=True)
            self._drawn = False
