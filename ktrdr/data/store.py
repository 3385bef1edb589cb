"""The bar store: one Hive-partitioned Parquet dataset per source, under the data directory.

::

  DataManager ── read / write (symbol, timeframe) ──► BarStore(data_dir, source)
                                                        │  one partition = one folder;
                                                        │  one file per year (per decade
                                                        │  for 1d / 1w), see dataset.py
  <data_dir>/                                           ▼   (a path, or a URL: filesystems.py)
    source=ib/timeframe=1h/symbol=AAPL/2023.parquet   IB's bars
                                      /2024.parquet
    source=sim/timeframe=1h/symbol=AAPL/2024.parquet  the simulator's bars (--sim)
    _symbol_cache/ib.json, _symbol_cache/sim.json     contracts and head timestamps (per source)
    _flat-layout/                                     the files of an old flat store, once
                                                      converted (migrate.py)

* **Sources kept apart**: each source (the provider's ``get_provider_info()["source"]``:
  "ib", "sim") has its own dataset root, ``<data_dir>/source=<source>``, so simulated bars
  never share a file with IB's. A store refuses bars of another source, and a partition whose
  files say another source, with ``SourceMismatchError``.
* **Reads** list the partition's folder and read its files; what the files' metadata says
  (ranges fetched, source, gateway, fetch time) is merged into ``StoredBars.fetched`` and
  ``StoredBars.meta``. A file that cannot be read raises ``DataCorruptError`` naming it, and
  it is never overwritten.
* **Writes** take the whole partition (``frame`` and ``fetched``), cut it into periods and
  rewrite only the files whose bars or fetched ranges changed (a tail update rewrites the
  current year, not ten). Each file is replaced atomically (``Location.write_atomic``); a
  file's metadata describes that file only, so every file is consistent on its own whatever
  happens between two of them.
* **Old stores**: a flat store (``<data_dir>/SYMBOL_tf.parquet``) is converted on first use
  (``migrate.py``); a flat file that cannot be converted blocks its own symbol/timeframe with
  the reason, never the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr.data.dataset import (
    BAR_COLUMNS,
    FORMAT_VERSION,
    MANAGED_KEYS,
    SCHEMA,
    Bars,
    FrameBuilder,
    clip_ranges,
    conform,
    decode_meta,
    empty_frame,
    is_data_file,
    partition_parts,
    periods_between,
)
from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.filesystems import (
    TMP_PREFIX,
    Entry,
    Location,
    default_data_dir,
    is_url,
    open_location,
)
from ktrdr.data.store_errors import (
    DataCorruptError,
    SourceMismatchError,
    StoreError,
    StoreUnusableError,
)
from ktrdr.data.symbol_cache import CACHE_DIR
from ktrdr.data.symbols import InvalidSymbolError, normalize_symbol
from ktrdr.data.timeframes import normalize_timeframe

log = logging.getLogger(__name__)

#: Where the files of a converted flat store are kept.
FLAT_BACKUP_DIR = "_flat-layout"
#: The dataset of the real gateway, and of the embedded simulator.
IB_SOURCE, SIM_SOURCE = "ib", "sim"
_SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,31}$")
#: Parquet writer options: snappy, microsecond timestamps (see dataset.py).
WRITE_OPTIONS: dict[str, Any] = {"compression": "snappy", "coerce_timestamps": "us"}
#: Files of a partition read at once (each also decoded by pyarrow's own threads).
READ_THREADS = max(2, min(4, (os.cpu_count() or 2) // 2))

# Kept importable from here: the store's public names.
__all__ = ["BAR_COLUMNS", "IB_SOURCE", "SCHEMA", "SIM_SOURCE", "BarStore", "DataCorruptError",
           "InvalidSymbolError", "SourceMismatchError", "StoreError", "StoreUnusableError",
           "StoredBars", "dataset_for", "dataset_name", "default_data_dir", "empty_frame",
           "merge_bars", "merge_ranges", "normalize_symbol"]


def dataset_name(source: Any) -> str:
    """A source as a dataset name: ``"IB"`` -> ``"ib"``.

    Raises:
        StoreError: not 1-32 letters, digits, "_" or "-".
    """
    text = str(source or "").strip().lower()
    if not _SOURCE_RE.match(text):
        raise StoreError(f"invalid data source {source!r}: use 1-32 letters, digits, '_' or '-' "
                         f"(e.g. 'ib', 'sim')")
    return text


def dataset_for(provider: Any | None) -> str:
    """The dataset a provider's bars belong to: its ``get_provider_info()["source"]`` (else its
    name); without a provider, "sim" when ``IB_GATEWAY=sim`` (the DataManager's default
    provider is then the embedded simulator), else "ib"."""
    if provider is None:
        sim = os.environ.get("IB_GATEWAY", "").strip().lower() == "sim"
        return SIM_SOURCE if sim else IB_SOURCE
    info = provider.get_provider_info() or {}
    return dataset_name(info.get("source") or info.get("name") or IB_SOURCE)


@dataclass
class StoredBars:
    """What a partition holds: the bars, the ranges fetched, and the metadata (source,
    provider, gateway, fetched_at, instrument_type, rows, files, written_at)."""

    frame: pd.DataFrame
    fetched: list[tuple[int, int]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping union of ``[start, end)`` epoch ranges (touching ones join)."""
    out: list[list[int]] = []
    for start, end in sorted((int(a), int(b)) for a, b in ranges if b > a):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def merge_bars(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Union by timestamp, the newer bar winning (a whole row: a new bar without ``wap`` has
    none); sorted; the store's columns that either side has."""
    if old.empty:
        merged = new
    elif new.empty:
        merged = old
    else:
        merged = pd.concat([old, new])
    merged = merged[~merged.index.duplicated(keep="last")].sort_index()
    return merged[[c for c in BAR_COLUMNS if c in merged.columns]]


@dataclass(frozen=True)
class _FileState:
    """What the store knows of one file: enough to tell whether a write would change it."""

    name: str
    size: int
    mtime_ns: int
    rows: int
    fetched: tuple[tuple[int, int], ...]
    digest: str | None
    source: str
    written_at: str
    meta: dict = field(hash=False, compare=False, default_factory=dict)
    #: read in full (or written) by this store: known to be a readable bar file
    verified: bool = False


class BarStore:
    """The bars of one source under a data directory (see the module docstring).

    Args:
        data_dir: a path or a URL (``s3://bucket/prefix``); default ``KTRDR_DATA_DIR`` or
            ``./data``.
        source: the dataset, ``"ib"`` or ``"sim"`` (or another provider's source name).
        migrate: convert a flat store found in ``data_dir`` on first use.
    """

    def __init__(self, data_dir: str | os.PathLike | Location | None = None,
                 source: str = IB_SOURCE, *,
                 migrate: bool = True):
        if isinstance(data_dir, Location):
            self.location = data_dir
            self.data_dir: Path | str = Path(data_dir.base) if data_dir.local else data_dir.url
        else:
            if data_dir is None:
                data_dir = default_data_dir()
            text = os.fspath(data_dir)
            self.data_dir = text if is_url(text) else Path(data_dir)
            self.location = open_location(text)
        self.source = dataset_name(source)
        self._migrate = migrate
        self._prepared = False
        self._lock = threading.RLock()
        self._states: dict[str, dict[str, _FileState]] = {}
        self._flat_blocked: dict[tuple[str, str], StoreError] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pool_finalizer: weakref.finalize | None = None

    @classmethod
    def for_provider(cls, data_dir: str | os.PathLike | None, provider: Any | None,
                     **kwargs: Any) -> BarStore:
        """The store of ``provider``'s source (``dataset_for``)."""
        return cls(data_dir, dataset_for(provider), **kwargs)

    def __repr__(self) -> str:
        return f"BarStore({str(self.data_dir)!r}, source={self.source!r})"

    # ----------------------------------------------------------------- where things are

    @property
    def root(self) -> Path | str:
        """The dataset's root, as a path or URL (``<data_dir>/source=<source>``)."""
        return self.location.display(self._root())

    def _root(self) -> str:
        return self.location.join(f"source={self.source}")

    @property
    def cache_path(self) -> str:
        """The symbol cache's file (``<data_dir>/_symbol_cache/<source>.json``), as a path in
        the filesystem."""
        return self.location.join(CACHE_DIR, f"{self.source}.json")

    def path(self, symbol: str, timeframe: str) -> Path | str:
        """The partition folder of ``symbol``/``timeframe`` (a ``Path`` on a local disk, a
        URL elsewhere); never outside the data directory.

        Raises:
            InvalidSymbolError: the symbol is not ``ROOT`` or ``ROOT@EXCHANGE``.
            TimeframeError: an unsupported timeframe.
        """
        return self.location.display(self._partition(symbol, timeframe)[2])

    def _partition(self, symbol: str, timeframe: str) -> tuple[str, str, str]:
        symbol, timeframe = normalize_symbol(symbol), normalize_timeframe(timeframe)
        part = self.location.join(f"source={self.source}", *partition_parts(timeframe, symbol))
        if self.location.local:  # a second guard: normalize_symbol allows no "/" nor ".."
            root = self.location.base
            if os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(part)))) != root:
                raise InvalidSymbolError(f"symbol {symbol!r} names a path outside {root}")
        return symbol, timeframe, part

    def files(self, symbol: str, timeframe: str) -> list[Path | str]:
        """The data files of a partition, oldest period first."""
        part = self._partition(symbol, timeframe)[2]
        return [self.location.display(e.path) for e in self._data_files(part)]

    def _data_files(self, part: str) -> list[Entry]:
        return [e for e in self.location.list_dir(part) if e.is_file and is_data_file(e.name)]

    def exists(self, symbol: str, timeframe: str) -> bool:
        self._prepare()
        return bool(self.files(symbol, timeframe))

    def list(self) -> list[tuple[str, str]]:
        """``(symbol, timeframe)`` of every partition that has files, sorted."""
        self._prepare()
        found = set()
        for entry in self.location.list_dir(self._root(), recursive=True):
            if not entry.is_file or not is_data_file(entry.name):
                continue
            parts = entry.path.replace("\\", "/").split("/")
            if len(parts) >= 3 and parts[-3].startswith("timeframe=") and \
                    parts[-2].startswith("symbol="):
                found.add((parts[-2][len("symbol="):], parts[-3][len("timeframe="):]))
        return sorted(found)

    # ----------------------------------------------------------------- reading

    def read(self, symbol: str, timeframe: str, columns: Sequence[str] | None = None
             ) -> StoredBars:
        """The stored bars (an empty frame when there are none).

        ``frame`` has a UTC ``DatetimeIndex`` and ``columns`` (default: open, high, low,
        close, volume, wap, bar_count); null values are NaN (``bar_count``: ``<NA>``).

        Raises:
            DataCorruptError: a file of the partition is not a readable bar file (named).
            SourceMismatchError: the partition's files say another source.
        """
        symbol, timeframe, part = self._partition(symbol, timeframe)
        wanted = _columns(columns)
        self._prepare()
        self._check_flat(symbol, timeframe)
        entries = self._data_files(part)
        if not entries and self._late_flat_file(symbol, timeframe):
            entries = self._data_files(part)
        frame, states = self._load(entries, wanted)
        with self._lock:
            self._states[part] = states
        if not states:
            return StoredBars(empty_frame(wanted))
        meta = self._partition_meta(part, symbol, timeframe, states)
        fetched = merge_ranges([r for s in states.values() for r in s.fetched])
        return StoredBars(frame, fetched, meta)

    def _load(self, entries: list[Entry], columns: tuple[str, ...]
              ) -> tuple[pd.DataFrame | None, dict[str, _FileState]]:
        """The files' bars as one frame, and their states. Footers first (metadata, row
        counts), then the column data of every file at once, each into its rows."""
        opened: list[tuple[Entry, pq.ParquetFile, list[str]]] = []
        states: dict[str, _FileState] = {}
        try:
            for entry in entries:
                try:
                    parquet, meta, names = self._open(entry, columns)
                except FileNotFoundError:  # removed since the listing
                    continue
                opened.append((entry, parquet, names))
                states[entry.name] = self._state(entry, meta, parquet.metadata.num_rows, True)
            if not opened:
                return None, states
            counts = [parquet.metadata.num_rows for _, parquet, _ in opened]
            offsets = np.cumsum([0, *counts])
            builder = FrameBuilder(int(offsets[-1]), columns)

            def decode(k: int) -> pa.Table:
                entry, parquet, names = opened[k]
                try:
                    table = parquet.read(columns=names, use_threads=True)
                    if table.num_rows != counts[k]:
                        raise ValueError(f"{table.num_rows} rows, the footer says {counts[k]}")
                    return conform(table, columns)
                except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
                    raise DataCorruptError(self.location.display(entry.path),
                                           f"{type(exc).__name__}: {exc}") from exc

            # The files are decoded on a few threads while this one copies each finished
            # table into its rows (in order, while it is still in the cache).
            if len(opened) == 1:
                builder.put(0, decode(0))
            else:
                futures = [self._readers().submit(decode, k) for k in range(len(opened))]
                try:
                    for k, future in enumerate(futures):
                        builder.put(int(offsets[k]), future.result())
                        futures[k] = None  # its table is copied: let it go
                finally:
                    pending = [f for f in futures if f is not None]
                    for future in pending:
                        future.cancel()
                    concurrent.futures.wait(pending)  # no decode outlives this read
        finally:
            for _, parquet, _ in opened:
                with contextlib.suppress(Exception):
                    parquet.close()
        if not builder.is_sorted():
            # Overlapping files (a crash between writing a new period and removing an old
            # one, or files copied in): the bars of the file written last win.
            age = {name: rank for rank, name in
                   enumerate(sorted(states, key=lambda n: states[n].written_at))}
            rank = np.repeat([age[entry.name] for entry, _, _ in opened], counts)
            builder.resolve_overlaps(rank)
        return builder.frame(), states

    def _readers(self) -> ThreadPoolExecutor:
        """The threads that decode a partition's files (started on first use, stopped by
        ``close`` or when the store is collected)."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ktrdr-store-read")
                    self._pool_finalizer = weakref.finalize(self, pool.shutdown, wait=False)
                    self._pool = pool
        return self._pool

    def close(self) -> None:
        """Stop the decoding threads (they start again if the store is used again)."""
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                self._pool_finalizer.detach()
                pool.shutdown(wait=True)

    def _open(self, entry: Entry, columns: Sequence[str]
              ) -> tuple[pq.ParquetFile, dict, list[str]]:
        """A file's reader, its metadata and the columns to read from it.

        Raises:
            DataCorruptError: no readable Parquet footer, or not a bar file.
        """
        try:
            if self.location.local:
                parquet = pq.ParquetFile(entry.path)
            else:
                parquet = pq.ParquetFile(entry.path, filesystem=self.location.fs,
                                         pre_buffer=True)
            try:
                schema = parquet.schema_arrow
                meta = decode_meta(schema.metadata)
                missing = [c for c in ("timestamp", *OHLCV_COLUMNS) if c not in schema.names]
                if missing:
                    raise ValueError(f"missing columns {missing}")
                _check_fetched(meta.get("fetched", []))
            except BaseException:
                parquet.close()
                raise
        except FileNotFoundError:
            raise
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            raise DataCorruptError(self.location.display(entry.path),
                                   f"{type(exc).__name__}: {exc}") from exc
        names = ["timestamp", *(c for c in columns if c in schema.names)]
        return parquet, meta, names

    def _state(self, entry: Entry, meta: dict, rows: int, verified: bool = False
               ) -> _FileState:
        return _FileState(verified=verified,
            name=entry.name, size=entry.size, mtime_ns=entry.mtime_ns,
            rows=int(meta.get("rows", rows)),
            fetched=tuple((int(a), int(b)) for a, b in meta.get("fetched", [])),
            digest=meta.get("digest"), source=_source_of(meta, self.source),
            written_at=str(meta.get("written_at", "")), meta=meta)

    def _partition_meta(self, part: str, symbol: str, timeframe: str,
                        states: dict[str, _FileState]) -> dict:
        sources = sorted({s.source for s in states.values()})
        if sources != [self.source]:
            other = [s for s in sources if s != self.source]
            raise SourceMismatchError(
                f"{self.location.display(part)} holds bars whose metadata says source "
                f"{', '.join(map(repr, other))}, in the {self.source!r} dataset: move those "
                f"files to that source's dataset ({self._other_root(other[0])}) or delete them")
        latest = max(states.values(), key=lambda s: s.written_at)
        meta = {k: v for k, v in latest.meta.items() if k not in MANAGED_KEYS}
        meta.update(source=self.source, symbol=symbol, timeframe=timeframe,
                    rows=sum(s.rows for s in states.values()), files=len(states),
                    written_at=latest.written_at or None)
        return meta

    def _other_root(self, source: str) -> Path | str:
        return self.location.display(self.location.join(f"source={source}"))

    # ----------------------------------------------------------------- writing

    def write(self, symbol: str, timeframe: str, frame: pd.DataFrame,
              fetched: Sequence[tuple[int, int]], meta: dict | None = None) -> Path | str:
        """Make the partition hold ``frame`` (its bars) and ``fetched`` (the ranges asked for),
        with ``meta`` (source, provider, gateway, fetched_at, ...) in each file written.

        Only the files of periods whose bars or fetched ranges changed are rewritten, each
        atomically. Returns the partition folder.

        Raises:
            SourceMismatchError: ``meta["source"]`` is not this store's source, or the
                partition's files say another source.
            DataCorruptError: a file of the partition is unreadable (it is not overwritten).
            ValueError: ``frame`` lacks a column or has naive timestamps.
        """
        symbol, timeframe, part = self._partition(symbol, timeframe)
        self._prepare()
        self._check_flat(symbol, timeframe)
        info = {k: v for k, v in (meta or {}).items() if k not in MANAGED_KEYS}
        source = dataset_name(info.get("source") or self.source)
        if source != self.source:
            raise SourceMismatchError(
                f"bars from source {source!r} cannot go into the {self.source!r} dataset "
                f"({self.root}): store them in their own dataset ({self._other_root(source)}: "
                f"BarStore(data_dir, source={source!r}), or --sim for the simulator)")
        info["source"] = source
        bars = Bars.from_frame(frame)
        ranges = merge_ranges(fetched)
        pieces = _split(timeframe, bars, ranges)
        with self._lock:
            existing = self._existing(part)
            foreign = sorted({s.source for s in existing.values() if s.source != source})
            if foreign:
                raise SourceMismatchError(
                    f"{self.location.display(part)} holds bars from source {foreign[0]!r}; "
                    f"bars from {source!r} are not merged into them: move the partition to "
                    f"the {foreign[0]!r} dataset ({self._other_root(foreign[0])}) or delete "
                    f"it, then load again")
            now = _now_text()
            states: dict[str, _FileState] = {}
            written = 0
            for period, piece, clip in pieces:
                digest = piece.digest()
                state = existing.get(period.name)
                if state is not None and state.digest == digest and \
                        state.fetched == tuple(clip):
                    states[period.name] = state
                    continue
                if state is not None and not state.verified:
                    self._verify(_child(part, period.name, self.location.local))
                file_meta = {**info, "format": FORMAT_VERSION, "symbol": symbol,
                             "timeframe": timeframe, "period": [period.start, period.end],
                             "rows": len(piece), "fetched": [list(r) for r in clip],
                             "digest": digest, "written_at": now}
                table = piece.table(file_meta)
                path = _child(part, period.name, self.location.local)
                self.location.write_atomic(
                    path, lambda handle, t=table: pq.write_table(t, handle, **WRITE_OPTIONS))
                written += 1
                entry = self._entry(path)
                states[period.name] = self._state(entry, file_meta, len(piece), True)
            for name in sorted(set(existing) - set(states)):
                stale = _child(part, name, self.location.local)
                if not existing[name].verified:
                    self._verify(stale)
                with contextlib.suppress(FileNotFoundError):
                    self.location.delete(stale)
            self._states[part] = states
        log.debug("%s %s: %d bars in %d file(s), %d rewritten", symbol, timeframe, len(bars),
                  len(pieces), written)
        return self.location.display(part)

    def _entry(self, path: str) -> Entry:
        if self.location.local:
            st = os.stat(path)
            return Entry(path, os.path.basename(path), True, st.st_size, st.st_mtime_ns)
        info = self.location.info(path)
        return Entry(path, info.base_name, True, info.size or 0, info.mtime_ns or 0)

    def _existing(self, part: str) -> dict[str, _FileState]:
        """The partition's files now, each described from the last read or write when it has
        not changed since, else from its footer."""
        known = self._states.get(part, {})
        out = {}
        for entry in self._data_files(part):
            state = known.get(entry.name)
            if state is None or (state.size, state.mtime_ns) != (entry.size, entry.mtime_ns):
                shown = self.location.display(entry.path)
                try:
                    with self.location.open_input(entry.path) as handle:
                        schema = pq.read_schema(handle)
                    meta = decode_meta(schema.metadata)
                    _check_fetched(meta.get("fetched", []))
                    missing = [c for c in ("timestamp", *OHLCV_COLUMNS) if c not in schema.names]
                    if missing:
                        raise ValueError(f"missing columns {missing}")
                except FileNotFoundError:
                    continue
                except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
                    raise DataCorruptError(shown, f"{type(exc).__name__}: {exc}") from exc
                state = self._state(entry, meta, int(meta.get("rows", 0)))
            out[entry.name] = state
        return out

    def _verify(self, path: str) -> None:
        """Read a file in full before replacing or removing it: an unreadable one raises
        ``DataCorruptError`` and is left alone."""
        try:
            with self.location.open_input(path) as handle:
                conform(pq.read_table(handle), BAR_COLUMNS)
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
            raise DataCorruptError(self.location.display(path),
                                   f"{type(exc).__name__}: {exc}") from exc

    # ----------------------------------------------------------------- upkeep

    def clean_temporary(self) -> int:
        """Delete temporary files left by a crash mid-write (in this dataset, the symbol
        cache's folder and the data directory itself); returns how many."""
        self._prepare()
        count = 0
        for base, recursive in ((self._root(), True), (self.location.join(CACHE_DIR), False),
                                (self.location.base, False)):
            for entry in self.location.list_dir(base, recursive=recursive):
                if entry.is_file and entry.name.startswith(TMP_PREFIX):
                    try:
                        self.location.delete(entry.path)
                        count += 1
                    except OSError:
                        pass
        if count:
            log.info("removed %d unfinished temporary file(s) in %s", count, self.data_dir)
        return count

    def check_usable(self, writable: bool = True) -> None:
        """Raise ``StoreUnusableError`` when the data directory cannot serve (a file where a
        folder should be, a read-only folder, a missing bucket, an unreachable server).
        Creates nothing; call it before starting anything expensive.
        """
        location = self.location
        location.check_dir(location.base, writable, "the data directory")
        for sub, what in ((self._root(), "the dataset folder"),
                          (location.join(CACHE_DIR), "the symbol cache folder")):
            try:
                kind = location.info(sub).type
            except (OSError, pa.ArrowException) as exc:
                raise StoreUnusableError(f"cannot reach {what} {location.display(sub)}: "
                                         f"{exc}") from exc
            if kind == pa.fs.FileType.File:
                raise StoreUnusableError(
                    f"{what} {location.display(sub)} is a file, not a folder: move it away")

    def migrate(self) -> Any:
        """Convert a flat store in the data directory now (see ``migrate.py``); returns the
        ``MigrationReport``."""
        from ktrdr.data.migrate import migrate_flat_layout

        with self._lock:
            report = migrate_flat_layout(self.location)
            self._flat_blocked = report.blocked()
            self._prepared = True
            self._states.clear()
        return report

    def _prepare(self) -> None:
        if self._prepared:
            return
        with self._lock:
            if self._prepared:
                return
            if self._migrate:
                from ktrdr.data.migrate import find_flat_files, migrate_flat_layout

                if find_flat_files(self.location):
                    report = migrate_flat_layout(self.location)
                    self._flat_blocked = report.blocked()
            self._prepared = True

    def _late_flat_file(self, symbol: str, timeframe: str) -> bool:
        """Whether a flat file for an empty partition appeared since this store started (and
        was converted now; a failure raises its error)."""
        if not self._migrate:
            return False
        name = f"{symbol}_{timeframe}.parquet"
        flat = os.path.join(self.location.base, name) if self.location.local else \
            f"{self.location.base}/{name}"
        try:
            if self.location.info(flat).type != pa.fs.FileType.File:
                return False
        except OSError:
            return False
        from ktrdr.data.migrate import migrate_flat_layout

        with self._lock:
            report = migrate_flat_layout(self.location)
            self._flat_blocked.update(report.blocked())
        self._check_flat(symbol, timeframe)
        return True

    def _check_flat(self, symbol: str, timeframe: str) -> None:
        error = self._flat_blocked.get((symbol, timeframe))
        if error is not None:
            raise error


def _child(folder: str, name: str, local: bool) -> str:
    return os.path.join(folder, name) if local else f"{folder}/{name}"


def _columns(columns: Sequence[str] | None) -> tuple[str, ...]:
    if columns is None:
        return BAR_COLUMNS
    wanted = tuple(columns)
    unknown = [c for c in wanted if c not in BAR_COLUMNS]
    if unknown:
        raise ValueError(f"unknown bar column(s) {unknown}; the store has {BAR_COLUMNS}")
    return wanted


def _split(timeframe: str, bars: Bars, ranges: list[tuple[int, int]]):
    """``[(period, bars, fetched clip)]``: the files a partition of these bars and ranges has."""
    periods = {}
    span = bars.span()
    for a, b in ([span] if span else []) + ranges:
        for period in periods_between(timeframe, a, b):
            periods[period.name] = period
    out = []
    for period in sorted(periods.values(), key=lambda p: p.start):
        piece = bars.between(period.start, period.end)
        clip = clip_ranges(ranges, period.start, period.end)
        if len(piece) or clip:
            out.append((period, piece, clip))
    return out


def _check_fetched(fetched: Any) -> None:
    if not isinstance(fetched, list) or not all(
            isinstance(r, (list, tuple)) and len(r) == 2 for r in fetched):
        raise ValueError("unreadable 'fetched' ranges in the metadata")


def _source_of(meta: dict, default: str) -> str:
    value = meta.get("source")
    if not value:
        return default
    try:
        return dataset_name(value)
    except StoreError:
        return str(value)


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
