"""How ``ktrdr data backfill`` and ``load`` show progress: the DataManager's ``ProgressEvent``s
rendered as they arrive.

::

    DataManager's async core (the command's event loop, on its work thread)
        │  ── ProgressEvent(symbol, requests_done, requests_total, rows, error), as each
        │     request lands
        ▼
    ProgressView(event) ── a terminal on stderr ──► one rich bar per symbol: requests done of
        │                                            total, bars saved, elapsed, ETA
        └───────────────── anything else (a log,  ──► plain lines: a symbol's first event, then
                            tee, CI)                  one per 10 % or every ``every`` seconds,
                                                      and one when it is done
    ProgressView.saved() ──► bars saved per symbol (what a Ctrl-C message reports)

Log records go through ``rich.logging.RichHandler`` on the same console (``clikit.setup_logging``),
so they print above the bars instead of through them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass
class _Symbol:
    name: str
    done: int = 0
    total: int = 0
    rows: int = 0
    errors: int = 0
    began: float = 0.0
    last_line: float = 0.0
    last_step: int = -1
    task: Any = None
    finished: bool = False


class ProgressView:
    """Renders ``ProgressEvent``s (call it with each one; thread-safe).

    Args:
        console: where to draw (stderr's console).
        timeframe: shown beside each symbol.
        live: rich bars (True) or plain lines (False); default: whether ``console`` is a
            terminal.
        every: seconds between plain lines of a symbol that is still moving.
        step: percent of a symbol's requests between plain lines.
    """

    def __init__(self, console: Console, timeframe: str = "", *, live: bool | None = None,
                 every: float = 5.0, step: int = 10):
        self.console = console
        self.timeframe = timeframe
        self.live = console.is_terminal if live is None else live
        self.every = every
        self.step = step
        self._symbols: dict[str, _Symbol] = {}
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._stopped = False
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("requests {task.fields[rows]:>10,} bars"), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn(),
                console=console, transient=False)

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop drawing (idempotent); the bars stay on screen as they were. Later events
        (a run winding down after Ctrl-C) still count their bars for ``saved`` but show
        nothing, and their errors are the interruption's, not failures."""
        with self._lock:
            self._stopped = True
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: Any) -> None:
        with self._lock:
            now = time.monotonic()
            entry = self._symbols.get(event.symbol)
            first = entry is None
            if first:
                entry = self._symbols[event.symbol] = _Symbol(event.symbol, began=now)
            entry.done = int(event.requests_done)
            entry.total = int(event.requests_total or 0)
            if not getattr(event, "error", None):
                entry.rows += int(getattr(event, "rows", 0) or 0)
            elif not self._stopped:
                entry.errors += 1
            if self._stopped:
                return
            if self._progress is not None:
                self._draw(entry, first)
            else:
                self._line(entry, first, now)

    def saved(self) -> dict[str, int]:
        """Bars saved so far per symbol (symbols with none left out)."""
        with self._lock:
            return {s.name: s.rows for s in self._symbols.values() if s.rows}

    # ----------------------------------------------------------------- rendering

    def _label(self, entry: _Symbol) -> str:
        return f"{entry.name} {self.timeframe}".strip()

    def _draw(self, entry: _Symbol, first: bool) -> None:
        assert self._progress is not None
        label = self._label(entry) + (" !" if entry.errors else "")
        if first:
            entry.task = self._progress.add_task(label, total=max(entry.total, 1),
                                                 completed=entry.done, rows=entry.rows)
            if entry.total == 0:  # nothing missing
                self._progress.update(entry.task, completed=1)
            return
        self._progress.update(entry.task, completed=entry.done, total=max(entry.total, 1),
                              rows=entry.rows, description=label)

    def _line(self, entry: _Symbol, first: bool, now: float) -> None:
        if entry.finished:
            return
        label = self._label(entry)
        if first and entry.done == 0:
            text = (f"{label}: nothing missing" if entry.total == 0 else
                    f"{label}: {entry.total} request{'s' * (entry.total != 1)} to make")
            entry.finished = entry.total == 0
            entry.last_line, entry.last_step = now, 0
            self._print(text)
            return
        failed = f", {entry.errors} failed" if entry.errors else ""
        if entry.total and entry.done >= entry.total:
            entry.finished = True
            self._print(f"{label}: done, {entry.done}/{entry.total} requests, "
                        f"{entry.rows:,} bars in {now - entry.began:.1f} s{failed}")
            return
        percent = 100 * entry.done // entry.total if entry.total else 0
        step = percent // self.step
        if step <= entry.last_step and now - entry.last_line < self.every:
            return
        entry.last_line, entry.last_step = now, step
        elapsed = now - entry.began
        eta = ""
        if entry.done and entry.total:
            eta = f", about {_seconds(elapsed * (entry.total - entry.done) / entry.done)} left"
        self._print(f"{label}: {entry.done}/{entry.total} requests ({percent}%), "
                    f"{entry.rows:,} bars, {elapsed:.1f} s{eta}{failed}")

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)


def _seconds(value: float) -> str:
    value = max(0.0, value)
    if value < 60:
        return f"{value:.0f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def saved_line(saved: dict[str, int], signal_name: str, where: str) -> str:
    """The one line a stopped backfill or load prints: what was saved and how to resume."""
    if not saved:
        return (f"interrupted ({signal_name}): nothing was saved yet; run the same command "
                f"again to start")
    total = sum(saved.values())
    names = [f"{symbol} {rows:,}" for symbol, rows in list(saved.items())[:6]]
    more = f", and {len(saved) - 6} more" if len(saved) > 6 else ""
    plural = "s" * (len(saved) != 1)
    return (f"interrupted ({signal_name}): saved {total:,} bars of {len(saved)} symbol{plural} "
            f"({', '.join(names)}{more}) in {where}; run the same command again to resume")


__all__ = ["ProgressView", "saved_line"]
