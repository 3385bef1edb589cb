"""Bar requests, IB's bar sizes and durations, and the Arrow schema bars travel in.

One module owns the vocabulary that the farm, the simulated gateway and ktrdr share:

* ``BAR_SIZES`` maps every bar size string IB accepts to its length in seconds;
* ``MAX_DURATION`` gives, per bar size, the longest duration IB accepts in one request
  (IB's official step table);
* ``parse_duration`` turns ``"2 D"`` into seconds and ``BarRequest`` is one request;
* ``BAR_SCHEMA`` is the one Arrow schema bars travel in, from a worker to the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

#: Every bar size IB accepts, with its length in seconds (weeks and months nominal).
BAR_SIZES: dict[str, int] = {
    "1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30,
    "1 min": 60, "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600,
    "15 mins": 900, "20 mins": 1200, "30 mins": 1800,
    "1 hour": 3600, "2 hours": 7200, "3 hours": 10800, "4 hours": 14400, "8 hours": 28800,
    "1 day": 86400, "1 week": 7 * 86400, "1 month": 30 * 86400,
}
#: Spellings some clients send for the same sizes.
BAR_SIZE_ALIASES = {"1W": "1 week", "1M": "1 month", "1 sec": "1 secs", "1 mins": "1 min",
                    "1 hours": "1 hour", "1 days": "1 day"}

#: Nominal seconds per duration unit (months and years as IB's step table treats them).
DURATION_UNITS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 31 * 86400, "Y": 366 * 86400}

#: Longest duration IB answers per bar size: IB's official step table, except that minute bars
#: go to a week (IB serves them; QuantConnect's Lean pages 1-minute bars a week at a time).
MAX_DURATION: dict[str, str] = {
    "1 secs": "1800 S", "5 secs": "3600 S", "10 secs": "14400 S", "15 secs": "14400 S",
    "30 secs": "28800 S", "1 min": "1 W", "2 mins": "1 W", "3 mins": "1 W", "5 mins": "1 W",
    "10 mins": "1 W", "15 mins": "1 W", "20 mins": "1 W", "30 mins": "1 M", "1 hour": "1 M",
    "2 hours": "1 M", "3 hours": "1 M", "4 hours": "1 M", "8 hours": "1 M", "1 day": "1 Y",
    "1 week": "1 Y", "1 month": "1 Y",
}

#: What IB can show in historical bars.
WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK")

#: Bars as they travel from a worker to the caller.
BAR_SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("s", tz="UTC")),
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("volume", pa.float64()),
    ("wap", pa.float64()),
    ("bar_count", pa.int64()),
])

_DURATION_RE = re.compile(r"^\s*(\d+)\s+([SDWMY])\s*$")


def normalize_bar_size(bar_size: str) -> str:
    """Return IB's canonical spelling of ``bar_size``.

    Raises:
        ValueError: the size is not one IB accepts; the message lists the legal ones.
    """
    name = BAR_SIZE_ALIASES.get(bar_size.strip(), bar_size.strip())
    if name not in BAR_SIZES:
        raise ValueError(f"illegal bar size {bar_size!r}; legal ones are: {', '.join(BAR_SIZES)}")
    return name


def bar_seconds(bar_size: str) -> int:
    """Length of one bar of ``bar_size`` in seconds."""
    return BAR_SIZES[normalize_bar_size(bar_size)]


def parse_duration(duration: str) -> tuple[int, str]:
    """Split ``"3 D"`` into ``(3, "D")``.

    Raises:
        ValueError: not ``<positive int> <S|D|W|M|Y>``.
    """
    match = _DURATION_RE.match(duration or "")
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"illegal duration {duration!r}; use '<n> S|D|W|M|Y', e.g. '2 D'")
    return int(match.group(1)), match.group(2)


def duration_seconds(duration: str) -> int:
    """Nominal length of ``duration`` in seconds (months 31 days, years 366)."""
    count, unit = parse_duration(duration)
    return count * DURATION_UNITS[unit]


def duration_allowed(bar_size: str, duration: str) -> bool:
    """Whether IB accepts ``duration`` for ``bar_size`` in one request."""
    longest = MAX_DURATION[normalize_bar_size(bar_size)]
    return duration_seconds(duration) <= duration_seconds(longest)


def is_daily_or_longer(bar_size: str) -> bool:
    """Daily, weekly and monthly bars are dated by trading day, not by time."""
    return bar_seconds(bar_size) >= 86400


@dataclass(frozen=True)
class BarRequest:
    """One historical-bars request, as the farm sends it to IB.

    Args:
        symbol: IB symbol, e.g. ``"AAPL"``, or ``"EUR.USD"`` for a forex pair.
        bar_size: one of ``BAR_SIZES`` (``"1 min"``, ``"1 hour"``, ...).
        duration: how far back from ``end``, e.g. ``"1 D"``.
        end: end of the range (timezone-aware; naive means UTC); None means now.
        what_to_show: TRADES, MIDPOINT, BID, ASK or BID_ASK.
        use_rth: regular trading hours only.
        sec_type, exchange, currency: the contract, as IB spells them.
    """

    symbol: str
    bar_size: str
    duration: str
    end: datetime | None = None
    what_to_show: str = "TRADES"
    use_rth: bool = True
    sec_type: str = "STK"
    exchange: str = "SMART"
    currency: str = "USD"

    def end_utc(self) -> datetime | None:
        """``end`` as an aware UTC datetime (None stays None)."""
        if self.end is None:
            return None
        if self.end.tzinfo is None:
            return self.end.replace(tzinfo=timezone.utc)
        return self.end.astimezone(timezone.utc)

    def ib_end(self) -> str:
        """``end`` in the form IB expects: ``"YYYYMMDD HH:MM:SS UTC"``, or ``""`` for now."""
        end = self.end_utc()
        return "" if end is None else end.strftime("%Y%m%d %H:%M:%S UTC")


def empty_bars() -> pa.Table:
    """A table with the bar schema and no rows."""
    return BAR_SCHEMA.empty_table()
