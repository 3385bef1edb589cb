"""The simulated historical-data service: parse a bar request, decide its answer, encode bars.

IB's validation order is mirrored: contract (200), bar size / duration / what-to-show (321),
end date (10314), duration against the bar size's step limit (162 "Time length exceed max"),
and only then the pacing rules. Encoded bar bodies are cached, so a repeated request costs a
dictionary look-up and a socket write.
"""

from __future__ import annotations

import collections
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from dateutil.relativedelta import relativedelta

from ibfarm import bars as barlib
from ibfarm.sim.protocol import FieldReader, read_contract

HMDS_PREFIX = "Historical Market Data Service error message:"
BAR_SIZE_INVALID = (
    "Error validating request.-'bK' : cause - Historical data bar size setting is invalid. "
    "Legal ones are: 1 secs, 5 secs, 10 secs, 15 secs, 30 secs, 1 min, 2 mins, 3 mins, 5 mins, "
    "10 mins, 15 mins, 20 mins, 30 mins, 1 hour, 2 hours, 3 hours, 4 hours, 8 hours, 1 day, 1W, 1M"
)
DURATION_INVALID = "Error validating request.-'bK' : cause - Invalid duration format: '{}'"
WHAT_INVALID = "Error validating request.-'bK' : cause - Invalid whatToShow: '{}'"
END_INVALID = (
    "End Date/Time: The date, time, or time-zone entered is invalid. The correct format is "
    "yyyymmdd hh:mm:ss xx/xxxx where yyyymmdd and xx/xxxx are optional. E.g.: "
    "20031126 15:59:00 US/Eastern  Note that there is a space between the date and time, and "
    "between the time and time-zone. You can also provide yyyymmddd-hh:mm:ss time is in UTC. "
    "Note that there is a dash between the date and time in UTC notation."
)
TOO_LONG = HMDS_PREFIX + "Time length exceed max."
NO_DATA = HMDS_PREFIX + "HMDS query returned no data: {}@{} {}"
CANCELLED = HMDS_PREFIX + "API historical data query cancelled: {}"
FARM_DOWN = HMDS_PREFIX + "HMDS data farm connection is broken:ushmds"
TOO_MANY_OPEN = (
    "Error processing request:-'bS' : cause - Only {} simultaneous API historical data "
    "requests allowed."
)

_END_RE = re.compile(r"^(\d{8})(?:([ -])(\d{2}:\d{2}:\d{2}))?(?:\s+(\S+))?$")


@dataclass(frozen=True)
class BarQuery:
    """A REQ_HISTORICAL_DATA message, parsed."""

    req_id: int
    contract: dict
    end_text: str
    bar_size: str
    duration: str
    use_rth: bool
    what_to_show: str
    format_date: int
    keep_up_to_date: bool

    @classmethod
    def parse(cls, reader: FieldReader) -> BarQuery:
        req_id = reader.int()
        contract = read_contract(reader)
        end_text, bar_size, duration = reader.text(), reader.text(), reader.text()
        use_rth, what, fmt = reader.bool(), reader.text(), reader.int(1)
        if contract["sec_type"] == "BAG":
            reader.skip(4 * reader.int())
        keep = reader.bool() if reader.remaining() else False
        return cls(req_id, contract, end_text, bar_size, duration, use_rth, what.upper(), fmt, keep)

    def identity(self) -> tuple:
        """What makes two requests identical for the pacing rules."""
        c = self.contract
        return (c["con_id"], c["symbol"], c["sec_type"], c["last_trade"], c["exchange"],
                c["currency"], self.end_text, self.bar_size, self.duration, self.use_rth,
                self.what_to_show)


def parse_end(text: str, now: datetime, default_zone: str) -> datetime:
    """An ``endDateTime`` as clients send it -> aware UTC datetime.

    Accepts ``""`` (now), ``"20240103 16:00:00 UTC"``, ``"20240103 16:00:00 US/Eastern"``,
    ``"20240103-21:00:00"`` (UTC), ``"20240103 16:00:00"`` (the gateway's zone) and
    ``"20240103"`` (end of that day). Raises ValueError for anything else (IB's 10314).
    """
    text = text.strip()
    if not text:
        return now
    match = _END_RE.match(text)
    if not match:
        raise ValueError(text)
    day, sep, clock, zone = match.groups()
    if sep == "-" and zone:
        raise ValueError(text)
    stamp = datetime.strptime(day + (clock or "23:59:59"), "%Y%m%d%H:%M:%S")
    if sep == "-":
        tz = timezone.utc
    else:
        try:
            tz = ZoneInfo(zone or default_zone)
        except (KeyError, ValueError, OSError):
            raise ValueError(text) from None
    return stamp.replace(tzinfo=tz).astimezone(timezone.utc)


def range_start(end: datetime, duration: str) -> datetime:
    """Start of the range ``duration`` before ``end`` (calendar days, weeks, months, years)."""
    count, unit = barlib.parse_duration(duration)
    if unit == "S":
        return end - timedelta(seconds=count)
    if unit == "D":
        return end - timedelta(days=count)
    if unit == "W":
        return end - timedelta(weeks=count)
    if unit == "M":
        return end - relativedelta(months=count)
    return end - relativedelta(years=count)


class BarEncoder:
    """Turns bar arrays into the text body of a HISTORICAL_DATA message, with an LRU cache.

    Formatting runs in Arrow's C++ kernels (one pass per column), so encoding costs little
    next to the socket write; the cache makes repeated requests nearly free. ``lookup`` is
    cheap enough for the event loop; ``build`` runs on a builder thread (thread-safe).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        self._cache: collections.OrderedDict[tuple, tuple[bytes, int]] = collections.OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._lock = threading.Lock()

    def lookup(self, key: tuple) -> tuple[bytes, int] | None:
        """The cached ``(body, bar_count)`` for ``key``, or None."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
            return hit

    def build(self, key: tuple, make_bars, format_date: int, zone: str) -> tuple[bytes, int]:
        """Encode ``make_bars()`` for ``key`` and cache it."""
        bars = make_bars()
        entry = (encode_bars(bars, format_date, zone), len(bars))
        with self._lock:
            self._cache[key] = entry
            self._bytes += len(entry[0])
            while self._bytes > self._max_bytes and len(self._cache) > 1:
                _, (old, _) = self._cache.popitem(last=False)
                self._bytes -= len(old)
        return entry


def encode_bars(bars, format_date: int, zone: str) -> bytes:
    """``date\\0open\\0high\\0low\\0close\\0volume\\0wap\\0count\\0`` for every bar."""
    count = len(bars)
    if count == 0:
        return b""
    columns = [_dates(np.asarray(bars.time, dtype=np.int64), bars.daily, format_date, zone)]
    for values in (bars.open, bars.high, bars.low, bars.close, bars.volume, bars.wap):
        columns.append(pc.cast(pa.array(values, pa.float64()), pa.string()))
    columns.append(pc.cast(pa.array(bars.count, pa.int64()), pa.string()))
    columns.append(pa.array([""] * count, pa.string()))  # gives each row its trailing \0
    joined = pc.binary_join_element_wise(*columns, "\0")
    offsets = joined.buffers()[1]
    start, end = np.frombuffer(offsets, dtype=np.int32)[[joined.offset, joined.offset + count]]
    return joined.buffers()[2].slice(int(start), int(end - start)).to_pybytes()


def _dates(epochs: np.ndarray, daily: bool, format_date: int, zone: str) -> pa.Array:
    stamps = pa.array(epochs, pa.int64()).cast(pa.timestamp("s", tz="UTC"))
    if daily:
        return pc.strftime(stamps, format="%Y%m%d")
    if format_date == 2:
        return pc.cast(pa.array(epochs, pa.int64()), pa.string())
    local = pc.strftime(stamps.cast(pa.timestamp("s", tz=_iana(zone))), format="%Y%m%d %H:%M:%S")
    return pc.binary_join_element_wise(local, pa.scalar(zone), " ")


def format_stamp(moment: datetime) -> str:
    """The classic two-space ``YYYYMMDD  HH:MM:SS`` form (UTC) for start/end fields."""
    return moment.astimezone(timezone.utc).strftime("%Y%m%d  %H:%M:%S")


def format_zoned(moment: datetime, zone: str) -> str:
    """``YYYYMMDD HH:MM:SS <zone>`` in ``zone``: how formatDate=1 dates a moment."""
    local = moment.astimezone(ZoneInfo(_iana(zone)))
    return f"{local:%Y%m%d %H:%M:%S} {zone}"


_IANA = {"US/Eastern": "America/New_York", "US/Central": "America/Chicago",
         "US/Pacific": "America/Los_Angeles", "US/Mountain": "America/Denver"}


def _iana(zone: str) -> str:
    return _IANA.get(zone, zone)
