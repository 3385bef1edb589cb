"""The store's dataset on a local disk: Hive layout, the file format (columns, microsecond UTC
timestamps, no-value markers as null, metadata in each file), one file per period with only
changed periods rewritten, atomic writes across several files, corrupt files reported and left
alone, and the simulator's bars kept apart from IB's."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ktrdr.data import store as store_mod
from ktrdr.data.data_manager import DataManager
from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.ib_data_adapter import IbDataAdapter
from ktrdr.data.store import BarStore, DataCorruptError, SourceMismatchError

from .conftest import model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def bars(start: str, periods: int, freq: str = "h", seed: int = 0, **extra) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=periods, freq=freq, tz="UTC", name="timestamp")
    close = np.round(100 + rng.standard_normal(periods).cumsum(), 2)
    frame = pd.DataFrame({"open": close - 0.5, "high": close + 1, "low": close - 1,
                          "close": close, "volume": rng.integers(1, 1000, periods) * 1.0},
                         index=index.as_unit("ns"))
    for name, values in extra.items():
        frame[name] = values
    return frame


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_layout_columns_units_and_metadata(tmp_path):
    store = BarStore(tmp_path, source="ib")
    frame = bars("2023-12-29 14:00", 100, wap=1.5, bar_count=7)
    ranges = [(int(utc(2023, 12, 29).timestamp()), int(utc(2024, 1, 4).timestamp()))]
    part = store.write("VOD@LSE", "1h", frame, ranges, {"source": "ib", "gateway": "gw:4002"})
    assert part == tmp_path / "source=ib" / "timeframe=1h" / "symbol=VOD@LSE"
    assert sorted(p.name for p in part.iterdir()) == ["2023.parquet", "2024.parquet"]
    for path in part.iterdir():
        parquet = pq.ParquetFile(path)
        # partition values in the path only; microseconds adjusted to UTC
        assert parquet.schema_arrow.names == ["timestamp", "open", "high", "low", "close",
                                              "volume", "wap", "bar_count"]
        assert parquet.schema_arrow.field("timestamp").type == pa.timestamp("us", tz="UTC")
        logical = parquet.schema.column(0).logical_type.to_json()
        assert json.loads(logical) == {"Type": "Timestamp", "isAdjustedToUTC": True,
                                       "timeUnit": "microseconds", "is_from_converted_type":
                                       False, "force_set_converted_type": False}
        meta = json.loads(parquet.schema_arrow.metadata[b"ktrdr"])
        year = int(path.stem)
        start, end = int(utc(year, 1, 1).timestamp()), int(utc(year + 1, 1, 1).timestamp())
        assert meta["period"] == [start, end] and meta["source"] == "ib"
        assert meta["gateway"] == "gw:4002" and meta["symbol"] == "VOD@LSE"
        assert meta["rows"] == parquet.metadata.num_rows
        # each file's fetched ranges are the part inside its own period
        assert meta["fetched"] == [[max(start, ranges[0][0]), min(end, ranges[0][1])]]
    stored = store.read("vod@lse", "1H")
    pd.testing.assert_frame_equal(stored.frame[list(OHLCV_COLUMNS)], frame[list(OHLCV_COLUMNS)],
                                  check_freq=False)
    assert (stored.frame["wap"] == 1.5).all() and (stored.frame["bar_count"] == 7).all()
    assert str(stored.frame["bar_count"].dtype) == "Int64"
    assert stored.fetched == ranges and stored.meta["files"] == 2
    assert stored.meta["rows"] == 100 and stored.meta["gateway"] == "gw:4002"


def test_daily_and_weekly_bars_are_kept_one_file_per_decade(tmp_path):
    store = BarStore(tmp_path)
    frame = bars("2008-01-07", 900, freq="W-MON")  # 2008 .. 2025
    part = store.write("IBM", "1w", frame, [])
    assert sorted(p.name for p in part.iterdir()) == ["2000-2009.parquet", "2010-2019.parquet",
                                                     "2020-2029.parquet"]
    assert len(store.read("IBM", "1w").frame) == 900


def test_ib_no_value_markers_are_stored_as_null(tmp_path):
    store = BarStore(tmp_path)
    forex = bars("2024-03-01", 4, volume=-1.0, wap=-1.0, bar_count=-1)
    # a futures bar below zero (WTI, April 2020) keeps its prices and its wap
    oil = bars("2020-04-20 17:00", 2, wap=-37.63, bar_count=12)
    oil[["open", "high", "low", "close"]] = -37.63
    store.write("EUR.USD", "1h", forex, [])
    store.write("CL@NYMEX", "1h", oil, [])
    [path] = store.files("EUR.USD", "1h")
    table = pq.read_table(path)
    assert table.column("volume").null_count == table.column("wap").null_count == 4
    assert table.column("bar_count").null_count == 4
    assert table.column("close").null_count == 0
    kept = store.read("CL@NYMEX", "1h").frame
    assert (kept["wap"] == -37.63).all() and (kept["close"] == -37.63).all()
    assert (kept["bar_count"] == 12).all() and kept["volume"].notna().all()


def test_frames_without_wap_and_bar_count_store_them_as_null(tmp_path):
    store = BarStore(tmp_path)
    store.write("AAPL", "1h", bars("2024-01-02 14:00", 5), [])
    frame = store.read("AAPL", "1h").frame
    assert list(frame.columns) == [*OHLCV_COLUMNS, "wap", "bar_count"]
    assert frame["wap"].isna().all() and frame["bar_count"].isna().all()
    assert list(store.read("AAPL", "1h", columns=["close"]).frame.columns) == ["close"]
    with pytest.raises(ValueError, match="unknown bar column"):
        store.read("AAPL", "1h", columns=["symbol"])


def test_an_update_rewrites_only_the_periods_it_changes(tmp_path):
    store = BarStore(tmp_path)
    frame = bars("2015-01-01", 24 * 365 * 10, seed=1)  # ten years of hourly bars
    part = store.write("SPY", "1h", frame, [(0, 100)])
    names = sorted(p.name for p in part.iterdir())
    assert names == ["1970.parquet", *(f"{y}.parquet" for y in range(2015, 2025))]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in part.iterdir()}
    stored = store.read("SPY", "1h")
    tail = bars(str(frame.index[-1] + pd.Timedelta(hours=1)), 48, seed=2)
    changed = frame.iloc[-1:].copy()
    changed["close"] += 1  # the last (partial) bar, completed
    merged = store_mod.merge_bars(stored.frame, pd.concat([changed, tail]))
    store.write("SPY", "1h", merged, stored.fetched, stored.meta)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in part.iterdir()}
    rewritten = sorted(n for n in after if after[n] != before.get(n))
    assert rewritten == ["2024.parquet"]  # 2015 .. 2023 and 1970 untouched
    again = store.read("SPY", "1h").frame
    assert len(again) == len(frame) + 48
    assert again["close"].iloc[len(frame) - 1] == frame["close"].iloc[-1] + 1


def test_a_write_that_dies_between_two_files_leaves_each_file_whole(tmp_path, monkeypatch):
    store = BarStore(tmp_path)
    first = bars("2023-12-31 20:00", 8)  # 4 bars in 2023, 4 in 2024
    span = [(int(utc(2023, 12, 31, 20).timestamp()), int(utc(2024, 1, 1, 4).timestamp()))]
    part = store.write("AAPL", "1h", first, span)
    old_2024 = (part / "2024.parquet").read_bytes()
    changed = first.copy()
    changed["close"] += 10
    longer = [(span[0][0] - 86400, span[0][1] + 86400)]
    real_write = pq.write_table
    calls = []

    def dies_on_the_second_file(table, where, **kw):
        calls.append(1)
        if len(calls) == 2:
            where.write(b"PAR1 half")
            raise OSError(28, "No space left on device")
        return real_write(table, where, **kw)

    monkeypatch.setattr(pq, "write_table", dies_on_the_second_file)
    with pytest.raises(OSError, match="No space"):
        store.write("AAPL", "1h", changed, longer)
    monkeypatch.setattr(pq, "write_table", real_write)
    assert sorted(p.name for p in part.iterdir()) == ["2023.parquet", "2024.parquet"]
    assert (part / "2024.parquet").read_bytes() == old_2024
    stored = BarStore(tmp_path).read("AAPL", "1h")
    # 2023 is the new version (bars and its range), 2024 the old one: never a mix in a file
    assert (stored.frame["close"].iloc[:4].to_numpy() == changed["close"].iloc[:4]).all()
    assert (stored.frame["close"].iloc[4:].to_numpy() == first["close"].iloc[4:]).all()
    assert stored.fetched == [(longer[0][0], span[0][1])]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_columns"])
def test_a_corrupt_file_is_named_and_never_overwritten(tmp_path, damage):
    store = BarStore(tmp_path)
    part = store.write("AAPL", "1d", bars("2009-06-01", 2000, freq="D"), [])
    victim = part / "2010-2019.parquet"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:500])
    elif damage == "garbage":
        victim.write_bytes(b"PAR1" + b"\x00" * 64 + b"PAR1")
    else:
        pq.write_table(pa.table({"x": [1, 2]}), victim)
    damaged = snapshot(tmp_path)
    fresh = BarStore(tmp_path)
    with pytest.raises(DataCorruptError) as err:
        fresh.read("AAPL", "1d")
    assert err.value.path == victim and str(victim) in str(err.value)
    with pytest.raises(DataCorruptError):
        fresh.write("AAPL", "1d", bars("2015-01-01", 3, freq="D"), [])
    assert snapshot(tmp_path) == damaged
    assert fresh.clean_temporary() == 0 and snapshot(tmp_path) == damaged


def test_sources_are_kept_apart_and_mixing_is_refused(tmp_path):
    ib, sim = BarStore(tmp_path, "ib"), BarStore(tmp_path, "sim")
    sim.write("AAPL", "1h", bars("2024-01-02", 5), [], {"source": "sim"})
    with pytest.raises(SourceMismatchError, match="--sim") as err:
        ib.write("AAPL", "1h", bars("2024-01-02", 5), [], {"source": "sim"})
    assert "source=sim" in str(err.value)
    assert not (tmp_path / "source=ib").exists()
    assert sim.root == tmp_path / "source=sim" and ib.root == tmp_path / "source=ib"
    # A simulator's file copied into IB's dataset is refused, not merged, and left alone.
    target = ib.path("AAPL", "1h")
    target.mkdir(parents=True)
    [src] = sim.files("AAPL", "1h")
    (target / src.name).write_bytes(src.read_bytes())
    before = snapshot(tmp_path)
    with pytest.raises(SourceMismatchError, match="move") as err:
        ib.read("AAPL", "1h")
    with pytest.raises(SourceMismatchError, match="not merged"):
        ib.write("AAPL", "1h", bars("2024-01-02", 9), [], {"source": "ib"})
    assert snapshot(tmp_path) == before


def test_a_sim_run_and_an_ib_run_never_share_a_file(tmp_path, sim, farm):
    """The same backfill through the embedded simulator (source "sim") and through an
    adapter labelled "ib" (pointed at the simulator, as a real gateway would be)."""
    data = tmp_path / "data"
    start, end = utc(2023, 6, 1), utc(2024, 6, 1)
    runs = {}
    for source in ("sim", "ib"):
        provider = IbDataAdapter(farm=farm, source=source)
        with DataManager(data, provider) as manager:
            reports = manager.backfill(["AAPL", "EUR.USD"], "1h", start, end)
            assert all(r.ok and r.gaps_left == 0 for r in reports), reports
            runs[source] = {p for p in data.rglob("*") if p.is_file()} - set().union(
                *runs.values())
            assert manager.store.root == data / f"source={source}"
            for symbol, kind in (("AAPL", "STK"), ("EUR.USD", "CASH")):
                frame = manager.load_data(symbol, "1h", start, end, mode="local")
                assert_matches_model(frame, model_bars(sim, symbol, kind, "1 hour", start, end))
                assert manager.get_data_summary(symbol, "1h")["source"] == source
    assert runs["sim"] and runs["ib"] and not runs["sim"] & runs["ib"]
    for source, files in runs.items():
        for path in files:
            folder = path.parts[len(data.parts)]
            assert folder == f"source={source}" or path.name == f"{source}.json", path
            if path.suffix == ".parquet":
                meta = json.loads(pq.read_schema(path).metadata[b"ktrdr"])
                assert meta["source"] == source
    caches = sorted(p.name for p in (data / "_symbol_cache").iterdir())
    assert caches == ["ib.json", "sim.json"]


def test_the_read_benchmark_reads_what_pyarrow_reads(tmp_path):
    """``benchmarks/store_read.measure`` runs, and the two readers it times agree."""
    import pyarrow.dataset as ds

    from benchmarks.store_read import SYMBOL, TIMEFRAME, measure

    result = measure(str(tmp_path), repeats=1)
    assert result["rows"] == 2608 * 390 and result["files"] == 10  # weekdays 2014-2023
    assert all(result[f"{name}_s"] > 0 for name in ("load_data", "pyarrow_table",
                                                    "pyarrow_table_ohlcv", "pyarrow_pandas"))
    with DataManager(tmp_path) as manager:
        frame = manager.load_data(SYMBOL, TIMEFRAME, mode="local")
        assert any(t.name.startswith("ktrdr-store-read") for t in threading.enumerate())
    # the store's decoding threads end with the manager
    assert not [t for t in threading.enumerate() if t.name.startswith("ktrdr-store-read")]
    table = ds.dataset(str(BarStore(tmp_path).path(SYMBOL, TIMEFRAME)), format="parquet"
                       ).to_table().sort_by("timestamp")
    direct = table.to_pandas().set_index("timestamp")
    direct.index = direct.index.as_unit("ns")
    pd.testing.assert_frame_equal(frame, direct[list(OHLCV_COLUMNS)], check_freq=False)
