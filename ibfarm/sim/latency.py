"""How long the simulated gateway takes to answer a historical request.

``latency="ib"`` is a model fitted to the published timings of the real gateway; a number is a
fixed delay. Either way ``latency_per_bar`` adds seconds per bar returned, and an explicit
``endDateTime`` multiplies the delay by ``latency_end_factor``::

    bars in the answer ─► IbLatency.seconds(bars, intraday) ─┐
                           or the fixed ``latency``  ─────────┴─► / latency_scale
                                                                  + latency_per_bar x bars
                                                                  x latency_end_factor (end set)

The fit (AAPL 1-minute bars, ib_insync#268): ``1 D`` (390 bars) took 0.6 s, ``5 D`` (1950)
8.3 s, ``6 D`` and ``10 D`` over 60 s (the client then cancels). Up to 1950 bars the time is a
power law through the first two figures (``t = floor + a * bars ** k``, k about 1.66: it grows
faster than the bar count); beyond it the time grows exponentially, reaching 61 s at 2340 bars,
capped at ``cap`` seconds. Daily and longer bars are served at IB's top published rate
(3,350 bars/s; published rates run from 55 to 3,350 bars/s). Divide by ``latency_scale`` to
keep tests fast with the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IbLatency:
    """Answer time of the real gateway as a function of the bars returned."""

    floor: float = 0.03          # a request's round trip inside IB, however small
    ref_bars: int = 390          # 1 D of 1-minute bars ...
    ref_seconds: float = 0.6     # ... took 0.6 s
    knee_bars: int = 1950        # 5 D of 1-minute bars ...
    knee_seconds: float = 8.3    # ... took 8.3 s
    over_bars: int = 2340        # 6 D ...
    over_seconds: float = 61.0   # ... took over 60 s
    cap: float = 300.0
    daily_rate: float = 3350.0   # bars per second for daily and longer bars

    def seconds(self, bars: int, intraday: bool = True) -> float:
        """Seconds the real gateway would take to answer with ``bars`` bars."""
        if bars <= 0:
            return self.floor
        if not intraday:
            return self.floor + bars / self.daily_rate
        k = math.log((self.knee_seconds - self.floor) / (self.ref_seconds - self.floor)) / \
            math.log(self.knee_bars / self.ref_bars)
        a = (self.ref_seconds - self.floor) / self.ref_bars ** k
        if bars <= self.knee_bars:
            return self.floor + a * bars ** k
        e_fold = (self.over_bars - self.knee_bars) / math.log(self.over_seconds /
                                                              self.knee_seconds)
        return min(self.cap, self.knee_seconds * math.exp((bars - self.knee_bars) / e_fold))


IB = IbLatency()


def answer_delay(latency: float | str, scale: float, per_bar: float, end_factor: float,
                 bars: int, intraday: bool, explicit_end: bool) -> float:
    """Seconds to wait before sending an answer of ``bars`` bars (see the module doc)."""
    base = IB.seconds(bars, intraday) if latency == "ib" else float(latency)
    delay = base / (scale or 1.0) + per_bar * bars
    return delay * (end_factor if explicit_end else 1.0)


def check_latency(value: float | str) -> float | str:
    """``"ib"`` or a non-negative number of seconds (a number in text is converted).

    Raises:
        ValueError: anything else, with what to give instead.
    """
    if isinstance(value, str):
        if value.strip().lower() == "ib":
            return "ib"
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"latency must be seconds or 'ib', not {value!r}") from None
    if value < 0:
        raise ValueError(f"latency must be >= 0 seconds, not {value}")
    return float(value)
