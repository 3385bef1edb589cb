"""The local bar store: one Parquet file per symbol and timeframe under the data directory.

``data_dir / f"{SYMBOL}_{timeframe}.parquet"`` holds the bars (a UTC ``timestamp`` column and
open, high, low, close, volume) and, in the Parquet schema metadata, where they came from
(``source``: "ib" or "sim", ``gateway``, ``fetched_at``) and which time ranges have been
fetched (``fetched``: ranges already asked for, with or without bars, so they are not asked
again).

Writes are atomic: a temporary file in the same directory, fsync, ``os.replace``, fsync of
the directory. A crash leaves either the old file or the new one, never a half one (stray
temporary files are ignored and cleaned up). A file that cannot be read is reported with
``DataCorruptError`` and left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.symbols import InvalidSymbolError, normalize_symbol
from ktrdr.data.timeframes import normalize_timeframe

log = logging.getLogger(__name__)

_META_KEY = b"ktrdr"
_TMP_PREFIX = ".tmp-"


def atomic_write(path: Path, write: Callable[[IO], object], binary: bool = True) -> None:
    """Write ``path`` through a temporary file beside it, fsynced, then renamed over it: a
    crash leaves the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

SCHEMA = pa.schema([
    ("timestamp", pa.timestamp("s", tz="UTC")),
    *((name, pa.float64()) for name in OHLCV_COLUMNS),
])


class StoreError(Exception):
    """A problem with the local store."""


class DataCorruptError(StoreError):
    """A stored file that cannot be read. It is never overwritten automatically."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"stored file {self.path} is unreadable ({reason}); it was left as it is: move it "
            f"away or delete it, then load the data again")


def default_data_dir() -> Path:
    """``KTRDR_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get("KTRDR_DATA_DIR") or "data")


@dataclass
class StoredBars:
    """What one file holds: the bars and the file's metadata."""

    frame: pd.DataFrame
    fetched: list[tuple[int, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def empty_frame() -> pd.DataFrame:
    index = pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns")
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in OHLCV_COLUMNS}, index=index)


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of ``[start, end)`` epoch ranges (touching ones join)."""
    out: list[list[int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def merge_bars(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Union by timestamp, the newer bar winning; sorted."""
    if old.empty:
        merged = new
    elif new.empty:
        merged = old
    else:
        merged = pd.concat([old, new])
    merged = merged[~merged.index.duplicated(keep="last")].sort_index()
    return merged[list(OHLCV_COLUMNS)]


class BarStore:
    """Parquet files under ``data_dir`` (see the module docstring)."""

    def __init__(self, data_dir: str | os.PathLike | None = None):
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    def path(self, symbol: str, timeframe: str) -> Path:
        """The file of ``symbol``/``timeframe``; never outside the data directory.

        Raises:
            InvalidSymbolError: the symbol is not a safe name.
        """
        name = f"{normalize_symbol(symbol)}_{normalize_timeframe(timeframe)}.parquet"
        root = self.data_dir.resolve()
        path = (root / name).resolve()
        if path.parent != root:
            raise InvalidSymbolError(f"symbol {symbol!r} names a path outside {root}")
        return path

    def exists(self, symbol: str, timeframe: str) -> bool:
        return self.path(symbol, timeframe).exists()

    def read(self, symbol: str, timeframe: str) -> StoredBars:
        """The stored bars (an empty frame when there is no file).

        Raises:
            DataCorruptError: the file exists but is not a readable bar file.
        """
        path = self.path(symbol, timeframe)
        if not path.exists():
            return StoredBars(empty_frame())
        try:
            table = pq.read_table(path)
            missing = [c for c in ("timestamp", *OHLCV_COLUMNS) if c not in table.column_names]
            if missing:
                raise ValueError(f"missing columns {missing}")
            raw = (table.schema.metadata or {}).get(_META_KEY, b"{}")
            meta = json.loads(raw)
            frame = table.select(["timestamp", *OHLCV_COLUMNS]).to_pandas()
        except (OSError, ValueError, pa.ArrowException, json.JSONDecodeError) as exc:
            raise DataCorruptError(path, f"{type(exc).__name__}: {exc}") from exc
        frame = frame.set_index("timestamp")
        frame.index = pd.DatetimeIndex(frame.index).tz_convert("UTC").as_unit("ns")
        frame.index.name = "timestamp"
        frame = frame.astype("float64")
        fetched = [(int(a), int(b)) for a, b in meta.pop("fetched", [])]
        return StoredBars(frame, fetched, meta)

    def write(self, symbol: str, timeframe: str, frame: pd.DataFrame,
              fetched: list[tuple[int, int]], meta: dict | None = None) -> Path:
        """Replace the file atomically with ``frame`` and its metadata."""
        path = self.path(symbol, timeframe)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = frame[list(OHLCV_COLUMNS)].astype("float64").copy()
        data.index = pd.DatetimeIndex(data.index).tz_convert("UTC").as_unit("s")
        table = pa.Table.from_pandas(data.rename_axis("timestamp").reset_index(),
                                     schema=SCHEMA, preserve_index=False)
        info = dict(meta or {})
        info.update(symbol=normalize_symbol(symbol), timeframe=normalize_timeframe(timeframe),
                    rows=len(data), written_at=_now_text(),
                    fetched=[list(r) for r in merge_ranges(fetched)])
        table = table.replace_schema_metadata({_META_KEY: json.dumps(info).encode()})
        atomic_write(path, lambda handle: pq.write_table(table, handle))
        _fsync_dir(path.parent)
        log.debug("wrote %s: %d bars", path, len(data))
        return path

    def clean_temporary(self) -> int:
        """Delete temporary files left by a crash mid-write; returns how many."""
        count = 0
        if not self.data_dir.is_dir():
            return 0
        for tmp in self.data_dir.glob(_TMP_PREFIX + "*"):
            try:
                tmp.unlink()
                count += 1
            except OSError:
                pass
        if count:
            log.info("removed %d unfinished temporary file(s) in %s", count, self.data_dir)
        return count

    def list(self) -> list[tuple[str, str]]:
        """``(symbol, timeframe)`` of every stored file."""
        out = []
        if not self.data_dir.is_dir():
            return out
        for path in sorted(self.data_dir.glob("*_*.parquet")):
            symbol, _, timeframe = path.stem.rpartition("_")
            out.append((symbol, timeframe))
        return out


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
