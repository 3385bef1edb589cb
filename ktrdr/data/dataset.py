"""The bar store's on-disk format: a Hive-partitioned Parquet dataset.

::

  <root>/timeframe=<tf>/symbol=<SYMBOL>/<period>.parquet      (root: see ``ktrdr.data.store``)
         └ partition values live in the path only (the Hive convention), never as columns

  one file per period: intraday timeframes (1m .. 4h)  one per UTC calendar year  2024.parquet
                       1d and 1w                        one per decade             2020-2029.parquet

Columns (``SCHEMA``), one row per bar, sorted by time, no duplicates:

==============  ===========================  ===============================================
column          Arrow / Parquet type         meaning
==============  ===========================  ===============================================
``timestamp``   timestamp[us, tz=UTC]        bar start; Parquet TIMESTAMP(MICROS,
                                             isAdjustedToUTC=true), read without loss by
                                             DuckDB, Polars, Spark and pandas
``open`` ..     float64                      open, high, low, close
``volume``      float64                      null when the source has none (IB sends -1
                                             for forex MIDPOINT bars)
``wap``         float64                      volume-weighted average price; null likewise
``bar_count``   int64                        trades in the bar; null likewise
==============  ===========================  ===============================================

What the store knows about a file rides in that file's Parquet key-value metadata under the
key ``ktrdr`` (JSON), so it survives copying the folder and is written in the same atomic
put as the bars on object storage: ``format``, ``symbol``, ``timeframe``, ``period`` (the
file's ``[start, end)`` in epoch seconds), ``rows``, ``source`` ("ib", "sim", ...),
``provider``, ``gateway``, ``fetched_at``, ``instrument_type``, ``fetched`` (the ranges
already asked for, with or without bars, clipped to the period: a range that returned
nothing is remembered as fetched and not asked again), ``digest`` (of the file's bars, to
skip rewriting an unchanged period) and ``written_at``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ktrdr.data.external_data_interface import BAR_COLUMNS, OHLCV_COLUMNS

UTC = timezone.utc
_FLOAT_COLUMNS = (*OHLCV_COLUMNS, "wap")
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
    *(pa.field(name, pa.float64()) for name in _FLOAT_COLUMNS),
    pa.field("bar_count", pa.int64()),
])
#: Key of the store's metadata in each file's Parquet key-value metadata.
META_KEY = b"ktrdr"
FORMAT_VERSION = 2
#: Timeframes kept in one file per decade (the others: one file per year).
DECADE_TIMEFRAMES = frozenset({"1d", "1w"})
#: Metadata keys the store sets itself (a caller's values for them are ignored).
MANAGED_KEYS = frozenset({"format", "symbol", "timeframe", "period", "rows", "fetched",
                          "digest", "written_at", "files"})

_US = 1_000_000
_NULL_COUNT = np.iinfo(np.int64).min


def partition_parts(timeframe: str, symbol: str) -> tuple[str, str]:
    """The partition's folders under the root: ``("timeframe=1h", "symbol=AAPL")``."""
    return f"timeframe={timeframe}", f"symbol={symbol}"


def is_data_file(name: str) -> bool:
    """A file of the dataset (``*.parquet``, not hidden)."""
    return name.endswith(".parquet") and not name.startswith((".", "_"))


# --------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """The span of one file: ``[start, end)`` in epoch seconds, and its file name."""

    name: str
    start: int
    end: int


def period_of_year(timeframe: str, year: int) -> Period:
    """The period of ``timeframe`` that holds (UTC) ``year``."""
    if timeframe in DECADE_TIMEFRAMES:
        first = year - year % 10
        last = first + 9
        name = f"{first:04d}-{last:04d}.parquet"
    else:
        first = last = year
        name = f"{year:04d}.parquet"
    start = int(datetime(first, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(last + 1, 1, 1, tzinfo=UTC).timestamp())
    return Period(name, start, end)


def periods_between(timeframe: str, start: int, end: int) -> list[Period]:
    """The periods that ``[start, end)`` (epoch seconds) touches, in order."""
    if end <= start:
        return []
    first = datetime.fromtimestamp(start, UTC).year
    last = datetime.fromtimestamp(end - 1, UTC).year
    out: list[Period] = []
    year = first
    while year <= last:
        period = period_of_year(timeframe, year)
        out.append(period)
        year = datetime.fromtimestamp(period.end, UTC).year
    return out


# --------------------------------------------------------------------------- bars


@dataclass
class Bars:
    """Bars as contiguous numpy columns, normalised for writing: ``ts`` in microseconds since
    the epoch (UTC), sorted and unique; floats with NaN for null; ``bar_count`` with
    ``count_valid`` for its nulls."""

    ts: np.ndarray
    floats: dict[str, np.ndarray]
    bar_count: np.ndarray
    count_valid: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> Bars:
        """Normalise a bar frame (UTC index; open, high, low, close, volume; optional ``wap``
        and ``bar_count``): -1 no-value markers become null, duplicates keep the last bar.

        Raises:
            ValueError: a required column is missing or the index is not timezone-aware.
        """
        missing = [c for c in OHLCV_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"bar frame lacks column(s) {missing}")
        index = pd.DatetimeIndex(frame.index)
        if index.tz is None:
            raise ValueError("bar timestamps must be timezone-aware (UTC)")
        ts = index.tz_convert("UTC").as_unit("us").asi8
        order = None
        if len(ts) > 1 and not (ts[1:] > ts[:-1]).all():
            # sort (stable), then keep the last of each timestamp: the newer bar wins
            order = np.argsort(ts, kind="stable")
            sorted_ts = ts[order]
            keep = np.ones(len(sorted_ts), dtype=bool)
            keep[:-1] = sorted_ts[1:] != sorted_ts[:-1]
            order = order[keep]
            ts = ts[order]
        ts = np.ascontiguousarray(ts, dtype=np.int64)

        def column(name: str) -> np.ndarray | None:
            if name not in frame.columns:
                return None
            values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64",
                                                                          na_value=np.nan)
            return np.ascontiguousarray(values if order is None else values[order])

        floats = {name: column(name) for name in OHLCV_COLUMNS}
        volume = floats["volume"]
        raw_count = column("bar_count")
        wap = column("wap")
        vol_marker = volume < 0
        count_marker = raw_count < 0 if raw_count is not None else np.zeros(len(ts), bool)
        if vol_marker.any():
            floats["volume"] = np.where(vol_marker, np.nan, volume)
        if wap is None:
            wap = np.full(len(ts), np.nan)
        else:
            marker = (wap == -1.0) & (vol_marker | count_marker)
            if marker.any():
                wap = np.where(marker, np.nan, wap)
        floats["wap"] = wap
        if raw_count is None:
            count = np.zeros(len(ts), dtype=np.int64)
            valid = np.zeros(len(ts), dtype=bool)
        else:
            valid = ~(np.isnan(raw_count) | count_marker)
            count = np.where(valid, np.nan_to_num(raw_count), 0).astype(np.int64)
        for name, values in floats.items():
            nan = np.isnan(values)
            if nan.any():  # one bit pattern for null (the digest depends on it)
                floats[name] = np.where(nan, np.nan, values)
        return cls(ts, floats, np.ascontiguousarray(count), np.ascontiguousarray(valid))

    def span(self) -> tuple[int, int] | None:
        """``[first, last]`` bar times in epoch seconds (``last`` rounded up), or None."""
        if not len(self.ts):
            return None
        return int(self.ts[0] // _US), int(-(-self.ts[-1] // _US)) + 1

    def between(self, start: int, end: int) -> Bars:
        """The bars in ``[start, end)`` (epoch seconds); views, no copy."""
        i, j = np.searchsorted(self.ts, [start * _US, end * _US])
        return Bars(self.ts[i:j], {k: v[i:j] for k, v in self.floats.items()},
                    self.bar_count[i:j], self.count_valid[i:j])

    def digest(self) -> str:
        """A hash of the bars (equal bars, equal digest)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.ts)
        for name in _FLOAT_COLUMNS:
            h.update(self.floats[name])
        h.update(np.where(self.count_valid, self.bar_count, _NULL_COUNT))
        return h.hexdigest()

    def table(self, metadata: dict | None = None) -> pa.Table:
        """The bars as an Arrow table of ``SCHEMA`` (with ``metadata`` under ``META_KEY``)."""
        arrays = [pa.array(self.ts, type=pa.int64()).view(TIMESTAMP_TYPE)]
        arrays += [pa.array(self.floats[name], from_pandas=True) for name in _FLOAT_COLUMNS]
        arrays.append(pa.array(self.bar_count, mask=~self.count_valid))
        table = pa.Table.from_arrays(arrays, schema=SCHEMA)
        if metadata is not None:
            table = table.replace_schema_metadata({META_KEY: encode_meta(metadata)})
        return table


# --------------------------------------------------------------------------- reading


def conform(table: pa.Table, columns: Sequence[str] = BAR_COLUMNS) -> pa.Table:
    """A table read from a file as ``timestamp`` + ``columns`` of ``SCHEMA``: another
    timestamp unit, or a naive timestamp (taken as UTC), becomes microseconds UTC; a column
    the file lacks (``wap``, ``bar_count``) becomes null.

    Raises:
        ValueError: the table has no ``timestamp``.
    """
    names = table.column_names
    if "timestamp" not in names:
        raise ValueError("missing column 'timestamp'")
    ts = table.column("timestamp")
    if ts.type != TIMESTAMP_TYPE:
        if pa.types.is_timestamp(ts.type) and ts.type.tz is None:
            ts = pc.assume_timezone(ts, "UTC")
        ts = ts.cast(TIMESTAMP_TYPE)
    arrays = [ts]
    fields = [SCHEMA.field("timestamp")]
    for name in columns:
        field = SCHEMA.field(name)
        if name in names:
            values = table.column(name)
            arrays.append(values if values.type == field.type else values.cast(field.type))
        else:
            arrays.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)]))
        fields.append(field)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def to_frame(table: pa.Table, columns: Sequence[str] = BAR_COLUMNS) -> pd.DataFrame:
    """A conformed table as a frame: a UTC ``DatetimeIndex`` (ns) named ``timestamp`` and
    ``columns`` (floats with NaN for null; ``bar_count`` as pandas' nullable Int64)."""
    ts = pc.cast(table.column("timestamp"), pa.timestamp("ns", tz="UTC"))
    body = table.select(list(columns))
    mapper = {pa.int64(): pd.Int64Dtype()}.get if "bar_count" in columns else None
    frame = body.to_pandas(split_blocks=True, self_destruct=True, types_mapper=mapper)
    frame.index = pd.DatetimeIndex(ts.to_pandas(), name="timestamp")
    return frame


def _pooled(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An uninitialised array in pyarrow's memory pool: the pool keeps freed memory for the
    next read, where a fresh ``np.empty`` of this size would fault in (and zero) every page
    again (about 3 ms per million bars)."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(pa.allocate_buffer(nbytes), dtype=dtype).reshape(shape)


class FrameBuilder:
    """Assembles the tables of a partition's files into one frame, copying each value once.

    ``put`` copies a file's (conformed) columns into preallocated contiguous arrays (in
    pyarrow's memory pool, see ``_pooled``) while they are fresh in the cache; files own
    disjoint row ranges, so they may be put from several threads. ``frame`` wraps those
    arrays without a further copy (one float64 block, a nanosecond UTC index). ``pyarrow``'s
    ``to_pandas`` of a multi-file table would copy into the same shape anyway, after
    concatenation.
    """

    def __init__(self, rows: int, columns: Sequence[str]):
        self.columns = tuple(columns)
        self.float_columns = [c for c in self.columns if c != "bar_count"]
        self.ts = _pooled((rows,), np.int64)
        self.values = _pooled((len(self.float_columns), rows), np.float64)
        with_count = "bar_count" in self.columns
        self.count = np.zeros(rows if with_count else 0, dtype=np.int64)
        self.count_valid = np.zeros(rows if with_count else 0, dtype=bool)

    def put(self, offset: int, table: pa.Table) -> None:
        """Copy a conformed table (``conform``) into rows ``offset ..``."""
        pos = offset
        for chunk in table.column("timestamp").chunks:
            n = len(chunk)
            np.multiply(chunk.to_numpy(zero_copy_only=False).view(np.int64), 1000,
                        out=self.ts[pos:pos + n])
            pos += n
        for row, name in enumerate(self.float_columns):
            pos = offset
            for chunk in table.column(name).chunks:
                n = len(chunk)
                self.values[row, pos:pos + n] = chunk.to_numpy(zero_copy_only=False)
                pos += n
        if len(self.count):
            pos = offset
            for chunk in table.column("bar_count").chunks:
                n = len(chunk)
                self.count[pos:pos + n] = chunk.fill_null(0).to_numpy()
                self.count_valid[pos:pos + n] = chunk.is_valid().to_numpy(zero_copy_only=False)
                pos += n

    def is_sorted(self) -> bool:
        """Strictly increasing timestamps (no overlap between the files)."""
        return bool(len(self.ts) < 2 or (self.ts[1:] > self.ts[:-1]).all())

    def resolve_overlaps(self, rank: np.ndarray) -> None:
        """Sort by time; of equal timestamps keep the row of the highest ``rank`` (per row:
        the rank of its file, e.g. by write time)."""
        order = np.lexsort((rank, self.ts))
        ts = self.ts[order]
        keep = np.ones(len(ts), dtype=bool)
        keep[:-1] = ts[1:] != ts[:-1]
        order = order[keep]
        self.ts = self.ts[order]
        self.values = self.values[:, order]
        if len(self.count):
            self.count, self.count_valid = self.count[order], self.count_valid[order]

    def frame(self) -> pd.DataFrame:
        index = pd.DatetimeIndex(self.ts.view("M8[ns]"), dtype="datetime64[ns, UTC]",
                                 name="timestamp")
        frame = pd.DataFrame(self.values.T, columns=self.float_columns, index=index, copy=False)
        if "bar_count" in self.columns:
            frame["bar_count"] = pd.arrays.IntegerArray(self.count, ~self.count_valid)
            if self.columns[-1] != "bar_count":
                frame = frame[list(self.columns)]
        return frame


def empty_frame(columns: Sequence[str] = BAR_COLUMNS) -> pd.DataFrame:
    """No bars, with the columns and dtypes ``to_frame`` gives."""
    index = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series(dtype="Int64" if c == "bar_count" else "float64")
                         for c in columns}, index=index)


# --------------------------------------------------------------------------- metadata


def encode_meta(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode()


def decode_meta(schema_metadata: dict | None) -> dict:
    """The store's metadata of a file (``{}`` for a file without it).

    Raises:
        ValueError: the metadata is there but is not a JSON object.
    """
    raw = (schema_metadata or {}).get(META_KEY)
    if raw is None:
        return {}
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise ValueError("ktrdr metadata is not an object")
    return meta


def clip_ranges(ranges: Iterable[tuple[int, int]], start: int, end: int
                ) -> list[tuple[int, int]]:
    """The parts of ``ranges`` inside ``[start, end)``."""
    out = []
    for a, b in ranges:
        a, b = max(int(a), start), min(int(b), end)
        if b > a:
            out.append((a, b))
    return out

