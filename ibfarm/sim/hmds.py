"""The simulated historical-data service: parse a bar request, decide what IB has, encode bars.

::

    REQ_HISTORICAL_DATA ─► BarQuery.parse ─► (session: IB's checks in IB's order, pacing)
                                          ─► available_from (what IB still keeps)
    MarketModel.bars ─► BarEncoder.build (Arrow kernels, LRU cache) ─► HISTORICAL_DATA body
    REQ_HISTORICAL_TICKS ─► TickQuery.parse ─► ticks_body (1-second bars as ticks)

IB keeps no bars of 30 seconds or less older than six months, no data of a future more than
two years past its expiry, and none of a delisted stock (IB's "Historical Data Limitations").
Encoded bar bodies are cached, so a repeated request costs a dictionary look-up and a write.
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
from ibfarm.contracts import iana_zone
from ibfarm.sim.instruments import EXPIRED_KEPT, Instrument
from ibfarm.sim.market import Bars
from ibfarm.sim.protocol import FieldReader, read_contract

#: Bars of this many seconds or less are kept for ``SMALL_BARS_KEPT`` only.
SMALL_BAR_SECONDS = 30
SMALL_BARS_KEPT = relativedelta(months=6)
#: The most ticks one historical-ticks request returns.
MAX_TICKS = 1000

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


@dataclass(frozen=True)
class TickQuery:
    """A REQ_HISTORICAL_TICKS message, parsed."""

    req_id: int
    contract: dict
    start_text: str
    end_text: str
    count: int
    what_to_show: str
    use_rth: bool

    @classmethod
    def parse(cls, reader: FieldReader) -> TickQuery:
        req_id = reader.int()
        contract = read_contract(reader)
        start, end, count = reader.text(), reader.text(), reader.int()
        what, use_rth = reader.text().upper(), reader.bool()
        return cls(req_id, contract, start, end, count, what, use_rth)

    @property
    def wanted(self) -> int:
        """How many ticks IB returns: the count asked for, at most ``MAX_TICKS``."""
        return min(max(self.count, 1), MAX_TICKS)


def available_from(inst: Instrument, bar_seconds: int, now: datetime) -> datetime | None:
    """The earliest moment IB still has data of this kind for ``inst``, or None for none.

    A delisted stock has none, nor a future more than two years past its expiry; bars of 30
    seconds or less go back six months from now; everything else to the head.
    """
    if inst.delisted:
        return None
    last = inst.last_day
    if inst.sec_type == "FUT" and last is not None and \
            last < (now - EXPIRED_KEPT).astimezone(timezone.utc).date():
        return None
    if bar_seconds <= SMALL_BAR_SECONDS:
        return max(inst.head, now - SMALL_BARS_KEPT)
    return inst.head


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
            tz = ZoneInfo(iana_zone(zone) if zone else iana_zone(default_zone))
        except (KeyError, ValueError, OSError):
            raise ValueError(text) from None
    return stamp.replace(tzinfo=tz).astimezone(timezone.utc)


def range_start(end: datetime, duration: str) -> datetime:
    """The latest start a request for ``duration`` ending at ``end`` can have: the calendar
    span (``N D`` as N x 24 h). The gateway counts ``N D`` in trading days
    (``MarketModel.range_start``), which reaches at least this far back."""
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
    local = pc.strftime(stamps.cast(pa.timestamp("s", tz=iana_zone(zone))),
                        format="%Y%m%d %H:%M:%S")
    return pc.binary_join_element_wise(local, pa.scalar(zone), " ")


def format_zoned(moment: datetime, zone: str) -> str:
    """``YYYYMMDD HH:MM:SS <zone>`` in ``zone``: how IB dates a moment (formatDate=1 bars,
    head timestamps, historicalDataEnd's start and end)."""
    local = moment.astimezone(ZoneInfo(iana_zone(zone)))
    return f"{local:%Y%m%d %H:%M:%S} {zone}"


def select_ticks(chunks: list, what: str, count: int, from_start: bool):
    """The first (``from_start``) or last ``count`` ticks in 1-second bar ``chunks``, in
    time order; for TRADES only seconds that traded."""
    fields = ("time", "open", "high", "low", "close", "wap", "volume", "count")
    if not chunks:
        return Bars(*(np.empty(0) for _ in fields), daily=False)
    cols = {f: np.concatenate([getattr(c, f) for c in chunks]) for f in fields}
    order = np.argsort(cols["time"], kind="stable")
    if what == "TRADES":
        order = order[cols["volume"][order] > 0]
    order = order[:count] if from_start else order[-count:]
    return Bars(*(cols[f][order] for f in fields), daily=False)


def ticks_body(ticks, what: str, inst: Instrument) -> tuple[bytes, int]:
    """The fields after ``tickCount`` of HISTORICAL_TICKS(_BID_ASK, _LAST) and the count.

    ``ticks`` are 1-second bars (TRADES, or MIDPOINT for quotes): TRADES gives a trade per
    second that traded (price = the second's close, size = its volume), MIDPOINT a midpoint
    per second, BID_ASK a quote per second (the midpoint +- the instrument's half spread).
    """
    half = inst.half_spread_ticks * inst.min_tick
    parts: list[str] = []
    count = 0
    for k in range(len(ticks)):
        t = int(ticks.time[k])
        if what == "TRADES":
            if ticks.volume[k] <= 0:
                continue
            parts += [str(t), "0", repr(float(ticks.close[k])), str(int(ticks.volume[k])),
                      "ISLAND", ""]
        elif what == "BID_ASK":
            mid = float(ticks.close[k])
            parts += [str(t), "0", repr(round(mid - half, inst.decimals)),
                      repr(round(mid + half, inst.decimals)), "100", "100"]
        else:
            parts += [str(t), "", repr(float(ticks.close[k])), "0"]
        count += 1
    return ("\0".join(parts) + ("\0" if parts else "")).encode(), count
