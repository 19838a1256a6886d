"""A one-line progress bar on stderr (stdout carries the markdown tables)."""

import sys
import time


class ProgressBar:
    """`total` steps; `advance(label)` moves one step and shows what runs next.

    On a terminal the line is redrawn in place; otherwise (a log file, CI) each step is printed
    on its own line so that the log stays readable.
    """

    def __init__(self, total_steps: int, title: str, stream=None, width_chars: int = 30):
        self.total_steps = max(1, total_steps)
        self.done_steps = 0
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.width_chars = width_chars
        self.start_s = time.monotonic()
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._draw("starting")

    def advance(self, label: str = "", steps: int = 1) -> None:
        self.done_steps = min(self.total_steps, self.done_steps + steps)
        self._draw(label)

    def note(self, label: str) -> None:
        """Show what is running now without moving the bar."""
        self._draw(label)

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def render(self, label: str) -> str:
        filled = self.width_chars * self.done_steps // self.total_steps
        bar = "#" * filled + "-" * (self.width_chars - filled)
        elapsed_s = time.monotonic() - self.start_s
        return (f"{self.title} [{bar}] {self.done_steps}/{self.total_steps} "
                f"{elapsed_s:6.0f}s  {label}")

    def _draw(self, label: str) -> None:
        line = self.render(label)
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
