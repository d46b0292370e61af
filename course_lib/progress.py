"""Progress lines that leave an honest record in a saved notebook.

>>> with progress(3, "demo", enabled=False) as bar:
...     bar.update(3)
>>> bar.done
3

A tqdm widget stores its *first* state ("0% | 0/68255") as the output's plain text, so a
saved notebook shows a bar that never moved above the line that says the work finished.
In a Jupyter kernel, :func:`progress` shows one text line instead, updated in place
(``display(..., display_id=True)``): while it runs it reads "sqlite medium: 120,000 of
682,200 rows (18%)", and what is saved is the final line ("sqlite medium: 682,200 rows in
4.1 s"). Elsewhere (a terminal, ``make``) it is a plain tqdm bar on stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Progress", "progress"]


def _in_kernel() -> bool:
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and type(shell).__name__ == "ZMQInteractiveShell"


class Progress:
    """A counter of work done, shown as one updating line (kernel) or a tqdm bar (terminal)."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool, every_s: float = 0.25):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.done, self.every_s = 0, every_s
        self._start = time.perf_counter()
        self._shown = 0.0
        self._handle: Any = None
        self._bar: Any = None
        if not enabled:
            return
        if _in_kernel():
            from IPython.display import display

            self._handle = display(self._line(), display_id=True)
        else:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=f" {unit}", leave=False)

    def _line(self) -> Any:
        from IPython.display import Pretty

        share = f" ({self.done / self.total:.0%})" if self.total else ""
        return Pretty(f"{self.desc}: {self.done:,} of {self.total:,} {self.unit}{share}")

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; redraw at most every ``every_s`` seconds."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._handle is not None:
            now = time.perf_counter()
            if now - self._shown >= self.every_s:
                self._shown = now
                self._handle.update(self._line())

    def close(self) -> None:
        """Replace the line by the record worth keeping: what was done, and how long it took."""
        seconds = time.perf_counter() - self._start
        if self._bar is not None:
            self._bar.close()
        elif self._handle is not None:
            from IPython.display import Pretty

            self._handle.update(
                Pretty(f"{self.desc}: {self.done:,} {self.unit} in {seconds:.1f} s")
            )


@contextmanager
def progress(
    total: int, desc: str, *, enabled: bool = True, unit: str = "items"
) -> Iterator[Progress]:
    """A :class:`Progress` for ``total`` units of work, closed when the block ends."""
    bar = Progress(total, desc, unit, enabled)
    try:
        yield bar
    finally:
        bar.close()
