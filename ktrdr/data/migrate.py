"""Converting a flat store (ktrdr's first layout) into the Hive datasets, once.

::

  <data_dir>/AAPL_1h.parquet      timestamp[s, UTC], open..volume; under the Parquet key
  <data_dir>/EUR.USD_1d.parquet   "ktrdr": source, gateway, fetched_at, fetched ranges, ...
  <data_dir>/symbol_cache.json
        │  migrate_flat_layout(): on a store's first use, or `ktrdr data migrate`
        ▼
  <data_dir>/source=<the file's source, "ib" if it has none>/timeframe=1h/symbol=AAPL/*.parquet
  <data_dir>/_symbol_cache/<source>.json   the old cache, when the data directory holds that
                                           one source's dataset (else it is moved aside)
  <data_dir>/_flat-layout/AAPL_1h.parquet  the original, moved there once the new files were
                                           read back and hold all its bars and ranges

Each flat file is converted on its own: its bars (seconds become microseconds; IB's -1 no-
value volume becomes null; daily and weekly bars, stamped at 00:00 UTC of their date in the
flat layout, are re-stamped at midnight of that date, or of the week's Monday, on the
exchange's clock, today's convention: the zone comes from the old symbol cache, else the
symbol's kind: forex and US listings New York), its fetched ranges and its metadata (source,
gateway, fetch time, instrument type) are merged into the partition of its source (bars
already there win: they are newer), read back and compared, and only then is the original
moved aside. A crash at any point leaves the original in place and a re-run converts it
again to the same result, so a store is converted exactly once however often it is
interrupted. A flat file that cannot be read or converted is left where it is; the store
then refuses its symbol/timeframe with the reason (``BarStore.read``), never the others.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ktrdr.data.dataset import Bars, conform, decode_meta, to_frame
from ktrdr.data.filesystems import Entry, Location, open_location
from ktrdr.data.store_errors import DataCorruptError, StoreError
from ktrdr.data.symbols import InvalidSymbolError, normalize_symbol
from ktrdr.data.timeframes import TimeframeError, normalize_timeframe

log = logging.getLogger(__name__)

FLAT_CACHE = "symbol_cache.json"


@dataclass
class FlatFile:
    """One flat file and what became of it."""

    name: str
    symbol: str
    timeframe: str
    source: str | None = None
    rows: int = 0
    ranges: int = 0
    target: str | None = None
    error: StoreError | None = None


@dataclass
class MigrationReport:
    """What ``migrate_flat_layout`` did."""

    data_dir: str
    converted: list[FlatFile] = field(default_factory=list)
    failed: list[FlatFile] = field(default_factory=list)
    cache: str | None = None
    backup: str | None = None

    def blocked(self) -> dict[tuple[str, str], StoreError]:
        """``(symbol, timeframe)`` -> the error of each flat file left unconverted."""
        return {(f.symbol, f.timeframe): f.error for f in self.failed if f.error is not None}

    @property
    def found(self) -> bool:
        return bool(self.converted or self.failed or self.cache)


def find_flat_files(location: Location) -> list[tuple[Entry, str, str]]:
    """``(entry, symbol, timeframe)`` of the flat store's files in the data directory (and
    an entry for its ``symbol_cache.json``, with empty symbol and timeframe)."""
    out = []
    for entry in location.list_dir(location.base):
        if not entry.is_file:
            continue
        if entry.name == FLAT_CACHE:
            out.append((entry, "", ""))
            continue
        if not entry.name.endswith(".parquet") or entry.name.startswith((".", "_")):
            continue
        stem, _, timeframe = entry.name[:-len(".parquet")].rpartition("_")
        try:
            out.append((entry, normalize_symbol(stem), normalize_timeframe(timeframe)))
        except (InvalidSymbolError, TimeframeError):
            continue  # not one of ours
    return out


def migrate_flat_layout(data_dir: str | os.PathLike | Location | None) -> MigrationReport:
    """Convert every flat file of ``data_dir`` (see the module docstring)."""
    from ktrdr.data.store import CACHE_DIR, FLAT_BACKUP_DIR, BarStore

    location = data_dir if isinstance(data_dir, Location) else open_location(data_dir)
    report = MigrationReport(str(location.display(location.base)))
    found = find_flat_files(location)
    if not found:
        return report
    backup = location.join(FLAT_BACKUP_DIR)
    stores: dict[str, BarStore] = {}
    cache_entry = None
    zones = _cached_zones(location, [entry for entry, symbol, _ in found if not symbol])
    for entry, symbol, timeframe in found:
        if not symbol:
            cache_entry = entry
            continue
        item = FlatFile(entry.name, symbol, timeframe)
        try:
            frame, fetched, meta = _read_flat(location, entry)
            item.source = source = str(meta.get("source") or "ib").strip().lower()
            store = stores.get(source)
            if store is None:
                store = stores[source] = BarStore(location, source, migrate=False)
            item.rows, item.ranges = len(frame), len(fetched)
            frame = _restamp(frame, timeframe, zones.get(symbol) or DEFAULT_ZONE)
            item.target = str(_convert(store, symbol, timeframe, frame, fetched, meta))
            _move_aside(location, entry, backup)
        except FileNotFoundError:
            continue  # converted meanwhile by another process
        except StoreError as exc:
            item.error = exc
        except (OSError, ValueError, pa.ArrowException) as exc:
            item.error = StoreError(
                f"the flat-layout file {location.display(entry.path)} was not converted "
                f"({type(exc).__name__}: {exc}); it was left as it is: fix the cause and "
                f"run `ktrdr data migrate`")
        (report.failed if item.error is not None else report.converted).append(item)
        if item.error is not None:
            log.warning("%s", item.error)
        else:
            log.info("converted %s: %d bars, %d fetched range(s) -> %s", entry.name, item.rows,
                     item.ranges, item.target)
    if cache_entry is not None and not report.failed:
        # The old cache is one source's only when the data directory holds one dataset.
        sources = {e.name[len("source="):] for e in location.list_dir(location.base)
                   if not e.is_file and e.name.startswith("source=")}
        target = location.join(CACHE_DIR, f"{sources.pop()}.json") if len(sources) == 1 \
            else None
        try:
            if target is not None and location.info(target).type == pa.fs.FileType.NotFound:
                location.move(cache_entry.path, target)
                report.cache = str(location.display(target))
            else:
                _move_aside(location, cache_entry, backup)
                report.cache = str(location.display(_child(location, backup,
                                                           cache_entry.name)))
        except OSError as exc:
            log.warning("the old symbol cache %s was left in place (%s)",
                        location.display(cache_entry.path), exc)
    if report.cache and not report.converted:
        log.info("moved the flat-layout store's symbol cache to %s", report.cache)
    if report.converted:
        report.backup = str(location.display(backup))
        log.warning("converted the flat-layout store in %s to the Hive-partitioned dataset: "
                    "%d file(s) (%s); the originals are kept in %s (delete them once "
                    "satisfied)%s", report.data_dir, len(report.converted),
                    ", ".join(sorted({f"source={f.source}" for f in report.converted})),
                    report.backup,
                    f"; {len(report.failed)} file(s) left unconverted" if report.failed else "")
    return report


def _cached_zones(location: Location, caches: list[Entry]) -> dict[str, str]:
    """Each symbol's exchange zone from the flat layout's symbol cache (if any)."""
    zones: dict[str, str] = {}
    for entry in caches:
        try:
            data = json.loads(location.read_bytes(entry.path))
        except (OSError, ValueError) as exc:
            log.warning("the old symbol cache %s is unreadable (%s); daily and weekly bars "
                        "are re-stamped by the symbols' kind", location.display(entry.path),
                        exc)
            continue
        for symbol, facts in (data.items() if isinstance(data, dict) else ()):
            contract = facts.get("contract") if isinstance(facts, dict) else None
            zone = contract.get("time_zone") if isinstance(contract, dict) else None
            if isinstance(zone, str) and zone:
                zones[symbol.upper()] = zone
    return zones


#: The zone of a flat-layout symbol the cache does not know: the first layout knew US listings
#: (New York) and forex pairs (IDEALPRO keeps New York time).
DEFAULT_ZONE = "America/New_York"


def _restamp(frame: Any, timeframe: str, zone: str) -> Any:
    """Daily and weekly bars from 00:00 UTC of their date to today's convention (midnight of
    the date, or of the week's Monday, on the exchange's clock); other bars as they are."""
    import pandas as pd

    from ktrdr.data.timeframes import label_stamps

    if timeframe not in ("1d", "1w") or not len(frame):
        return frame
    days = frame.index.tz_convert("UTC").tz_localize(None).normalize()
    if timeframe == "1w":
        days = days - pd.to_timedelta(days.dayofweek, unit="D")
    out = frame.copy()
    out.index = label_stamps(days, zone).as_unit(frame.index.unit)
    out.index.name = frame.index.name
    return out[~out.index.duplicated(keep="last")]


def _read_flat(location: Location, entry: Entry) -> tuple[Any, list[tuple[int, int]], dict]:
    """A flat file's bars (as the store's frame), fetched ranges and metadata.

    Raises:
        DataCorruptError: the file is not a readable bar file.
    """
    shown = location.display(entry.path)
    try:
        with location.open_input(entry.path) as handle:
            table = pq.read_table(handle)
        meta = decode_meta(table.schema.metadata)
        missing = [c for c in ("timestamp", "open", "high", "low", "close", "volume")
                   if c not in table.column_names]
        if missing:
            raise ValueError(f"missing columns {missing}")
        frame = to_frame(conform(table))
        fetched = [(int(a), int(b)) for a, b in meta.pop("fetched", [])]
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise DataCorruptError(shown, f"{type(exc).__name__}: {exc}") from exc
    return frame, fetched, meta


def _convert(store: Any, symbol: str, timeframe: str, frame: Any,
             fetched: list[tuple[int, int]], meta: dict) -> Any:
    """Merge one flat file into its partition, read it back and check nothing was lost."""
    from ktrdr.data.store import merge_bars, merge_ranges

    existing = store.read(symbol, timeframe)
    had = existing.frame.index
    merged = merge_bars(frame, existing.frame)  # bars already in the dataset are newer
    ranges = merge_ranges([*fetched, *existing.fetched])
    info = dict(meta)
    if len(had) or existing.fetched:
        info.update({k: v for k, v in existing.meta.items() if v is not None})
    target = store.write(symbol, timeframe, merged, ranges, info)
    back = store.read(symbol, timeframe)
    lost = ~frame.index.isin(back.frame.index)
    if lost.any():
        raise StoreError(f"converting {symbol} {timeframe}: {int(lost.sum())} bar(s) missing "
                         f"after the write; the flat file was left in place")
    fresh = ~frame.index.isin(had)
    if fresh.any():
        want = Bars.from_frame(frame[fresh])
        got = Bars.from_frame(back.frame.loc[frame.index[fresh]])
        if want.digest() != got.digest():
            raise StoreError(f"converting {symbol} {timeframe}: the bars read back differ from "
                             f"the flat file's; the flat file was left in place")
    if merge_ranges([*back.fetched, *fetched]) != back.fetched:
        raise StoreError(f"converting {symbol} {timeframe}: fetched ranges missing after the "
                         f"write; the flat file was left in place")
    return target


def _child(location: Location, folder: str, name: str) -> str:
    return os.path.join(folder, name) if location.local else f"{folder}/{name}"


def _move_aside(location: Location, entry: Entry, backup: str) -> None:
    target = _child(location, backup, entry.name)
    if location.info(target).type != pa.fs.FileType.NotFound:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        stem, dot, ext = entry.name.rpartition(".")
        target = _child(location, backup, f"{stem}.{stamp}{dot}{ext}")
    location.move(entry.path, target)


__all__ = ["FlatFile", "MigrationReport", "find_flat_files", "migrate_flat_layout"]
