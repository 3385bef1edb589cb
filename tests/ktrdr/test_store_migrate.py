"""A store in the flat layout (``<data_dir>/SYMBOL_tf.parquet``: second timestamps, OHLCV only,
metadata under the ``ktrdr`` key, ``symbol_cache.json``) is converted once, on first use or
with ``ktrdr data migrate``, losing nothing: bars, fetched ranges, source (the simulator's
files go to the simulator's dataset). A file that cannot be converted stays and blocks only
its own symbol; an interrupted conversion completes on the next run."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.data.data_manager import DataManager
from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.filesystems import Location
from ktrdr.data.ib_data_adapter import IbDataAdapter
from ktrdr.data.store import BarStore, DataCorruptError, StoreError

from .conftest import historical

UTC = timezone.utc
START, END = datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
#: flat file -> (symbol, timeframe, the source its metadata names: None for no source key)
FLAT = {"AAPL_1h.parquet": ("AAPL", "1h", "ib"), "EUR.USD_1h.parquet": ("EUR.USD", "1h", "sim"),
        "MSFT_1d.parquet": ("MSFT", "1d", None)}
FLAT_SCHEMA = pa.schema([("timestamp", pa.timestamp("s", tz="UTC")),
                         *((c, pa.float64()) for c in OHLCV_COLUMNS)])


def write_flat(path, symbol: str, timeframe: str, frame: pd.DataFrame,
               fetched: list[tuple[int, int]], meta: dict) -> None:
    """A file as the flat store wrote it (its ``BarStore.write``, byte for byte in schema)."""
    data = frame[list(OHLCV_COLUMNS)].astype("float64").copy()
    data["volume"] = data["volume"].fillna(-1.0)  # it kept IB's -1
    data.index = pd.DatetimeIndex(data.index).tz_convert("UTC").as_unit("s")
    table = pa.Table.from_pandas(data.rename_axis("timestamp").reset_index(),
                                 schema=FLAT_SCHEMA, preserve_index=False)
    info = dict(meta)
    info.update(symbol=symbol, timeframe=timeframe, rows=len(data),
                written_at="2024-06-07T21:00:00+00:00", fetched=[list(r) for r in fetched])
    pq.write_table(table.replace_schema_metadata({b"ktrdr": json.dumps(info).encode()}), path)


@pytest.fixture(scope="module")
def originals(tmp_path_factory, provider):
    """Bars and fetched ranges from real backfills on the simulator (the flat files'
    content), and a flat store holding them."""
    scratch = tmp_path_factory.mktemp("scratch")
    content = {}
    with DataManager(scratch, provider) as manager:
        for name, (symbol, timeframe, _) in FLAT.items():
            [report] = manager.backfill([symbol], timeframe, START, END)
            assert report.ok and report.rows > 0, report
            stored = manager.store.read(symbol, timeframe)
            content[name] = (stored.frame, stored.fetched)
    flat = tmp_path_factory.mktemp("flat")
    for name, (symbol, timeframe, source) in FLAT.items():
        frame, fetched = content[name]
        if timeframe == "1d":  # the flat layout stamped a daily bar 00:00 UTC of its date
            frame = frame.copy()
            frame.index = frame.index.tz_convert("America/New_York").tz_localize(
                None).normalize().tz_localize("UTC")
        meta = {"provider": "IB", "gateway": "127.0.0.1:4002",
                "fetched_at": "2024-06-07T20:59:00+00:00", "instrument_type": None}
        if source is not None:
            meta["source"] = source
        write_flat(flat / name, symbol, timeframe, frame, fetched, meta)
    cache = {"AAPL": {"head": "1980-12-12T14:30:00+00:00", "head_at": 1.0}}
    (flat / "symbol_cache.json").write_text(json.dumps(cache))
    (flat / "my_export.parquet").write_bytes(b"someone else's file")
    (flat / "notes.txt").write_text("not ours")
    return flat, content


def copy_of(flat, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(flat, data)
    return data


def tree(folder) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_bars(stored, frame: pd.DataFrame) -> None:
    want = frame[list(OHLCV_COLUMNS)].copy()
    got = stored.frame[list(OHLCV_COLUMNS)]
    pd.testing.assert_frame_equal(got, want, check_freq=False)


def test_first_use_converts_everything_once(originals, tmp_path, sim, farm, caplog):
    flat, content = originals
    data = copy_of(flat, tmp_path)
    flat_bytes = {name: (flat / name).read_bytes() for name in FLAT}
    with caplog.at_level(logging.INFO, logger="ktrdr.data.migrate"):
        manager = DataManager(data, IbDataAdapter(farm=farm, source="ib"))
    told = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(told) == 1 and "converted the flat-layout store" in told[0].getMessage()
    assert "3 file(s)" in told[0].getMessage() and "_flat-layout" in told[0].getMessage()
    # the flat files are gone from the top; kept byte for byte aside; strangers untouched
    top = sorted(p.name for p in data.iterdir())
    assert top == ["_flat-layout", "my_export.parquet", "notes.txt", "source=ib", "source=sim"]
    for name, raw in flat_bytes.items():
        assert (data / "_flat-layout" / name).read_bytes() == raw
    # mixed sources: the old cache is not given to either dataset
    assert (data / "_flat-layout" / "symbol_cache.json").exists()
    for name, (symbol, timeframe, source) in FLAT.items():
        frame, fetched = content[name]
        store = BarStore(data, source or "ib", migrate=False)
        stored = store.read(symbol, timeframe)
        assert_same_bars(stored, frame)  # forex volume: the flat -1 is null now
        assert stored.fetched == fetched
        assert stored.meta["source"] == (source or "ib")
        assert stored.meta["gateway"] == "127.0.0.1:4002"
        assert stored.meta["fetched_at"] == "2024-06-07T20:59:00+00:00"
    assert np.isnan(BarStore(data, "sim").read("EUR.USD", "1h").frame["volume"]).all()
    # once: a second start converts nothing and touches nothing
    before = tree(data)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ktrdr.data.migrate"):
        again = DataManager(data, IbDataAdapter(farm=farm, source="ib"))
        assert len(again.load_data("AAPL", "1h", mode="local")) == len(content[
            "AAPL_1h.parquet"][0])
    assert not caplog.records and tree(data) == before
    # nothing lost: the converted ranges count as fetched, so a backfill asks for no bars
    requests = historical(sim)
    reports = manager.backfill(["AAPL"], "1h", START, END)
    assert reports[0].ok and reports[0].requests == 0 and historical(sim) == requests
    manager.close()
    again.close()


def test_the_cache_follows_a_single_source(originals, tmp_path):
    flat, _ = originals
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(flat / "EUR.USD_1h.parquet", data)
    shutil.copy(flat / "symbol_cache.json", data)
    BarStore(data, "ib").clean_temporary()  # any first use converts
    assert json.loads((data / "_symbol_cache" / "sim.json").read_text())["AAPL"]["head"]
    assert not (data / "symbol_cache.json").exists()


def test_ktrdr_data_migrate_says_what_it_did(originals, tmp_path):
    flat, _ = originals
    data = copy_of(flat, tmp_path)
    (data / "SPY_1h.parquet").write_bytes(b"truncated")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "migrate", "--data-dir", str(data)])
    assert result.exit_code == 1, result.output  # one file could not be converted
    for name in FLAT:
        assert name in result.output
    assert "SPY_1h.parquet" in result.output and "unreadable" in result.output
    assert "3 file(s) converted" in result.output and "_flat-layout" in result.output
    # the unreadable one is left alone and blocks only SPY 1h
    assert (data / "SPY_1h.parquet").read_bytes() == b"truncated"
    with pytest.raises(DataCorruptError, match="SPY_1h.parquet"):
        BarStore(data).read("SPY", "1h")
    assert len(BarStore(data).read("AAPL", "1h").frame) > 0
    (data / "SPY_1h.parquet").unlink()
    result = runner.invoke(app, ["data", "migrate", "--data-dir", str(data)])
    assert result.exit_code == 0 and "symbol cache" in result.output  # it waited for SPY
    result = runner.invoke(app, ["data", "migrate", "--data-dir", str(data)])
    assert result.exit_code == 0 and "nothing to convert" in result.output


def test_an_interrupted_conversion_completes_on_the_next_run(originals, tmp_path, monkeypatch):
    flat, content = originals
    data = copy_of(flat, tmp_path)
    real_move = Location.move
    moves = []

    def fails_once(self, src, dst):
        moves.append(src)
        if len(moves) == 1:  # the first file is written but cannot be moved aside
            raise OSError(5, "Input/output error")
        return real_move(self, src, dst)

    monkeypatch.setattr(Location, "move", fails_once)
    first = BarStore(data, "ib")
    report = first.migrate()
    assert len(report.failed) == 1 and len(report.converted) == 2
    name = report.failed[0].name
    assert name == "AAPL_1h.parquet" and (data / name).exists()  # left where it was
    with pytest.raises(StoreError, match="not converted"):
        first.read("AAPL", "1h")
    monkeypatch.setattr(Location, "move", real_move)
    again = BarStore(data, "ib")
    report = again.migrate()
    assert [f.name for f in report.converted] == [name] and not report.failed
    for item, (sym, tf, src) in FLAT.items():
        frame, fetched = content[item]
        stored = BarStore(data, src or "ib").read(sym, tf)
        assert_same_bars(stored, frame)
        assert stored.fetched == fetched
    assert sorted(p.name for p in (data / "_flat-layout").iterdir()) == sorted(
        [*FLAT, "symbol_cache.json"])
