"""Bar requests, IB's bar sizes and durations, and the Arrow schema bars travel in.

One module owns the vocabulary that the farm, the simulated gateway and ktrdr share:

* ``BAR_SIZES`` maps every bar size string IB accepts to its length in seconds;
* ``normalize_bar_size`` turns the spellings people type ("1 sec", "1h") into IB's, and
  ``duration_problem`` says why IB would refuse a duration for a bar size (its step table
  binds bars of 30 s and less; ``N D`` stops at 365);
* ``parse_duration`` turns ``"2 D"`` into seconds and ``BarRequest`` is one request;
* ``BAR_SCHEMA`` is the one Arrow schema bars travel in, from a worker to the caller.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

#: Every bar size IB accepts, in IB's own spelling, with its length in seconds (weeks and
#: months nominal). IB's 321 text lists "1W" and "1M"; clients also send "1 week" and
#: "1 month", which it takes too. Anything else ("1 sec", "1 mins") is refused with 321.
BAR_SIZES: dict[str, int] = {
    "1 secs": 1, "5 secs": 5, "10 secs": 10, "15 secs": 15, "30 secs": 30,
    "1 min": 60, "2 mins": 120, "3 mins": 180, "5 mins": 300, "10 mins": 600,
    "15 mins": 900, "20 mins": 1200, "30 mins": 1800,
    "1 hour": 3600, "2 hours": 7200, "3 hours": 10800, "4 hours": 14400, "8 hours": 28800,
    "1 day": 86400, "1 week": 7 * 86400, "1 month": 30 * 86400, "1W": 7 * 86400,
    "1M": 30 * 86400,
}
#: The sizes as IB's 321 text lists them ("Legal ones are: ...").
LEGAL_BAR_SIZES = ("1 secs, 5 secs, 10 secs, 15 secs, 30 secs, 1 min, 2 mins, 3 mins, 5 mins, "
                   "10 mins, 15 mins, 20 mins, 30 mins, 1 hour, 2 hours, 3 hours, 4 hours, "
                   "8 hours, 1 day, 1W, 1M")
#: Unit words people type, by the unit IB spells ("secs", "min", "hour", ...).
_UNIT_WORDS = {
    "s": "sec", "sec": "sec", "secs": "sec", "second": "sec", "seconds": "sec",
    "m": "min", "min": "min", "mins": "min", "minute": "min", "minutes": "min",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
    "w": "week", "wk": "week", "week": "week", "weeks": "week",
    "mo": "month", "mon": "month", "month": "month", "months": "month",
}
_BAR_TEXT_RE = re.compile(r"^\s*(\d+)\s*([A-Za-z]+)\s*$")

#: Nominal seconds per duration unit (months and years as IB's step table treats them).
DURATION_UNITS = {"S": 1, "D": 86400, "W": 7 * 86400, "M": 31 * 86400, "Y": 366 * 86400}

#: Longest duration IB answers per bar size for bars of 30 seconds or less: IB's official
#: step table. For bars of a minute and longer IB lifted the step limits (it serves months of
#: 1-minute bars); only ``N D`` with N over 365 is refused there (321 'bH': use years).
STEP_LIMIT: dict[str, str] = {
    "1 secs": "1800 S", "5 secs": "3600 S", "10 secs": "14400 S", "15 secs": "14400 S",
    "30 secs": "28800 S",
}
#: The longest ``N D`` IB takes (longer must be asked in years).
MAX_DAYS = 365

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
    """IB's spelling of a bar size typed the way people type it.

    ``"1 secs"`` stays; ``"1 sec"``, ``"1s"``, ``"5 min"``, ``"1h"``, ``"1 hours"``, ``"1d"``,
    ``"1w"``, ``"1 month"`` become ``"1 secs"``, ``"5 mins"``, ``"1 hour"``, ``"1 day"``,
    ``"1 week"``, ``"1 month"``. A bare ``"1M"`` is IB's month (``"1m"`` a minute).

    Raises:
        ValueError: not a size IB offers; the message lists the legal ones.
    """
    text = (bar_size or "").strip()
    if text in BAR_SIZES:
        return text
    match = _BAR_TEXT_RE.match(text)
    unit = None
    if match:
        word = match.group(2)
        unit = "month" if word == "M" else _UNIT_WORDS.get(word.lower())
    if unit is not None:
        count = int(match.group(1))
        plural = count != 1 or unit == "sec"
        name = f"{count} {unit}{'s' if plural else ''}"
        if name in BAR_SIZES:
            return name
    raise ValueError(f"illegal bar size {bar_size!r}; IB's are: {LEGAL_BAR_SIZES}")


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


def duration_problem(bar_size: str, duration: str) -> str | None:
    """Why IB would refuse ``duration`` for ``bar_size`` in one request, or None.

    ``"days"``: ``N D`` with N over 365 (IB: 321 'bH', "must be made in years");
    ``"step"``: longer than the step table allows for bars of 30 s or less (IB: 162 "Time
    length exceed max.").
    """
    count, unit = parse_duration(duration)
    if unit == "D" and count > MAX_DAYS:
        return "days"
    limit = STEP_LIMIT.get(normalize_bar_size(bar_size))
    if limit is not None and duration_seconds(duration) > duration_seconds(limit):
        return "step"
    return None


def duration_allowed(bar_size: str, duration: str) -> bool:
    """Whether IB accepts ``duration`` for ``bar_size`` in one request."""
    return duration_problem(bar_size, duration) is None


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def check_wire_text(value: object, field: str) -> str:
    """``value`` if IB's wire protocol can carry it, else ``ValueError`` naming ``field``.

    Fields travel NUL-separated, so a NUL (or any other control character) inside one would
    shift every field after it: the gateway cannot read the message and closes the connection.
    """
    if not isinstance(value, str):
        raise ValueError(f"{field} must be text, not {type(value).__name__} {value!r}")
    bad = _CONTROL_RE.search(value)
    if bad:
        raise ValueError(f"{field} {value!r} holds the control character {bad.group()!r} at "
                         f"position {bad.start()}; IB's protocol cannot carry it: remove it")
    return value


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

    def checked(self) -> BarRequest:
        """This request in IB's own terms: bar size in IB's spelling ("1h" -> "1 hour"),
        what-to-show upper-cased, every text field one the wire can carry.

        Raises:
            ValueError: what IB would refuse (the message says what to use instead).
        """
        if not isinstance(self.symbol, str):  # a ready contract (checked by the farm)
            symbol = self.symbol
        elif not self.symbol.strip():
            raise ValueError("empty symbol; give an IB symbol such as AAPL or EUR.USD")
        else:
            symbol = check_wire_text(self.symbol, "symbol")
        bar_size = normalize_bar_size(check_wire_text(self.bar_size, "bar_size"))
        parse_duration(check_wire_text(self.duration, "duration"))
        what = check_wire_text(self.what_to_show, "what_to_show").strip().upper()
        if what not in WHAT_TO_SHOW:
            raise ValueError(f"what_to_show {self.what_to_show!r} is not one IB serves bars "
                             f"of; use one of {', '.join(WHAT_TO_SHOW)}")
        for name in ("sec_type", "exchange", "currency"):
            check_wire_text(getattr(self, name) or "", name)
        if self.end is not None and not isinstance(self.end, datetime):
            raise ValueError(f"end must be a datetime (or None for now), not {self.end!r}")
        return dataclasses.replace(self, symbol=symbol, bar_size=bar_size,
                                   duration=self.duration.strip(), what_to_show=what)

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

