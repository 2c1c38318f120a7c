"""A small progress display for training runs (no third-party dependency).

:class:`Progress` is a :class:`tpgraph.train.Callback` with three modes:

``"bar"``    one line on a terminal, redrawn in place at most ten times a second::

                 tp  [########............]  8200/25000  loss 0.0312  val 0.0291  seq 0.87  1210 b/s  ETA 0:14

``"lines"``  one plain line per validation point (for logs, pipes and CI);
``"off"``    nothing.

Building the engine of a long sequence takes seconds (about 2 s per 10^4
steps): on a terminal the bar shows its stages first (declaring, compiling);
as lines, one line says how long it took if it took a second or more.

``mode="auto"`` picks ``"bar"`` when the stream is a terminal and ``"lines"``
otherwise; ``--quiet`` on the command line means ``"off"``.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import TextIO

from .train.trainer import Callback

__all__ = ["Progress", "format_duration"]

MODES = ("auto", "bar", "lines", "off")


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``; ``3725`` -> ``"1:02:05"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _num(x: float | None, fmt: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, fmt)


class Progress(Callback):
    """Progress of one training run on ``stream`` (standard error by default).

    Parameters
    ----------
    mode : {"auto", "bar", "lines", "off"}
    label : str
        Shown first on every line (e.g. the method, ``"tp"``).
    stream : text stream
    min_interval : float
        Seconds between two redraws of the bar.
    """

    def __init__(self, mode: str = "auto", label: str = "", stream: TextIO | None = None,
                 min_interval: float = 0.1):
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {MODES}, got {mode!r}")
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        self.mode = mode
        self.label = label
        self.min_interval = min_interval
        self.total = 0
        self.loss = math.nan
        self.val_loss: float | None = None
        self.seq_acc: float | None = None
        self._next_draw = 0.0
        self._t0 = time.monotonic()
        self._b0 = 0
        self._drawn = False
        self._started = False
        self._compile_t0: float | None = None

    # ------------------------------------------------------------------ hooks
    def on_compile(self, trainer, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self._compile_t0 is None:
            self._compile_t0 = now
        finished = stage == "compiling" and done == total
        if self.mode == "bar":
            if finished:
                self._clear()
            elif now >= self._next_draw:
                self._next_draw = now + self.min_interval
                frac = 0.4 * done / total if stage == "declaring" else 0.4 + 0.6 * done / total
                filled = int(round(frac * 20))
                text = (f"{self.label + ' ' if self.label else ''}{stage} the graph of length "
                        f"{trainer.task.length}  [{'#' * filled}{'.' * (20 - filled)}]  {100 * frac:.0f}%  "
                        f"{format_duration(now - self._compile_t0)}")
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self.stream.write("\r" + text[:width].ljust(width))
                self.stream.flush()
                self._drawn = True
        elif self.mode == "lines" and finished and now - self._compile_t0 >= 1.0:
            self._print(f"{self._prefix()}built the graph of length {trainer.task.length} in "
                        f"{format_duration(now - self._compile_t0)}")

    def on_start(self, trainer) -> None:
        self.total = trainer.config.protocol.n_batches
        self._t0 = time.monotonic()
        self._b0 = trainer.state.batch
        if trainer.state.rows:
            self.val_loss = trainer.state.rows[-1]["val_loss"]
            self.seq_acc = trainer.state.rows[-1]["seq_acc"]
        if self.mode == "lines":
            where = f" in {trainer.files.root}" if trainer.files is not None else ""
            start = f"from batch {trainer.state.batch} " if trainer.state.batch else ""
            self._print(f"{self._prefix()}training {start}{trainer.config.summary_line()}{where}")

    def on_batch(self, trainer, batch: int, loss: float) -> None:
        self.loss = loss
        if batch == self._b0 + 1 and not self._started:  # rates count from the first batch, not start-up
            self._t0 = time.monotonic()
            self._b0 = batch
            self._started = True
        if self.mode != "bar":
            return
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + self.min_interval
            self._draw(batch)

    def on_validation(self, trainer, row: dict) -> None:
        self.val_loss, self.seq_acc = row["val_loss"], row["seq_acc"]
        if self.mode == "lines":
            batch = int(row["batch"])
            self._print(f"{self._prefix()}batch {batch:>{len(str(self.total))}}/{self.total}  "
                        f"train {_num(row['train_loss'])}  val {_num(row['val_loss'])}  "
                        f"step_acc {_num(row['step_acc'], '.3f')}  seq_acc {_num(row['seq_acc'], '.3f')}  "
                        f"rho(W_h) {_num(row['spectral_radius_W_h'], '.3g')}  "
                        f"{self._rate(batch)}  {format_duration(row['elapsed_s'])}")
        elif self.mode == "bar":
            self._draw(int(row["batch"]))

    def on_end(self, trainer, summary: dict) -> None:
        if self.mode == "bar" and self._drawn:
            self._draw(trainer.state.batch)
            self.stream.write("\n")
            self.stream.flush()
        if self.mode != "off" and summary["status"] != "completed":
            self._print(f"{self._prefix()}{summary['status']}: {summary['reason']}")

    # ------------------------------------------------------------------ drawing
    def _prefix(self) -> str:
        return f"[{self.label}] " if self.label else ""

    def _rate(self, batch: int) -> str:
        dt = time.monotonic() - self._t0
        done = batch - self._b0
        return f"{done / dt:.0f} b/s" if dt > 0 and done > 0 else "- b/s"

    def _draw(self, batch: int) -> None:
        dt = time.monotonic() - self._t0
        done = batch - self._b0
        rate = done / dt if dt > 0 else 0.0
        eta = (self.total - batch) / rate if rate > 0 else math.nan
        frac = batch / self.total if self.total else 0.0
        head = f"{self.label + ' ' if self.label else ''}{batch:>{len(str(self.total))}}/{self.total}"
        tail = (f"loss {_num(self.loss)}  val {_num(self.val_loss)}  seq {_num(self.seq_acc, '.2f')}  "
                f"{rate:.0f} b/s  ETA {format_duration(eta)}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        bar_width = max(0, min(30, width - len(head) - len(tail) - 8))
        if bar_width >= 5:
            filled = int(round(frac * bar_width))
            text = f"{head}  [{'#' * filled}{'.' * (bar_width - filled)}]  {tail}"
        else:
            text = f"{head}  {tail}"
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        """Erase the bar's line (the next draw or print starts on a clean line)."""
        if self.mode == "bar" and self._drawn:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((100, 20)).columns - 1) + "\r")
            self.stream.flush()
            self._drawn = False

    def _print(self, line: str) -> None:
        if self.mode == "bar" and self._drawn:
            self.stream.write("\r" + " " * (shutil.get_terminal_size((100, 20)).columns - 1) + "\r")
        self.stream.write(line + "\n")
        self.stream.flush()
