"""Progress of a long job: a redrawn bar on a terminal, plain periodic lines in logs.

``update`` is called every step, so it does almost nothing: one clock read and
a comparison, and only draws when the interval has passed.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 24


class Progress:
    """Epoch, step, running loss and steps/s of a training loop."""

    def __init__(
        self,
        total_steps: int,
        epochs: int,
        stream: TextIO | None = None,
        interval_s: float | None = None,
    ) -> None:
        self.total_steps = total_steps
        self.epochs = epochs
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        # A terminal redraws one line often; a log gets a new line now and then.
        self.interval_s = interval_s if interval_s is not None else (0.2 if self.live else 30.0)
        self._started = time.monotonic()
        self._next_draw = self._started + self.interval_s
        self._drawn = False

    def update(self, step: int, epoch: int, running_loss: float) -> None:
        """``step`` counts from 1 over the whole run; ``epoch`` from 1."""
        now = time.monotonic()
        if now < self._next_draw and step < self.total_steps:
            return
        self._next_draw = now + self.interval_s
        self._draw(self.describe(step, epoch, running_loss, now - self._started))

    def describe(self, step: int, epoch: int, running_loss: float, elapsed_s: float) -> str:
        rate = step / elapsed_s if elapsed_s > 0 else 0.0
        text = f"epoch {epoch}/{self.epochs} step {step}/{self.total_steps} loss {running_loss:.3f} {rate:.0f} steps/s"
        if not self.live:
            return text
        filled = _BAR_WIDTH * step // max(self.total_steps, 1)
        return f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {text}"

    def write(self, line: str) -> None:
        """Print a line of the job's own output without tearing the bar."""
        self._clear()
        print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _draw(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[2K" + text)
            self._drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
