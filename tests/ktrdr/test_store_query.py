"""The dataset as other tools see it: the README's DuckDB and Polars snippets (run as written,
from the README) read every symbol and timeframe, and what they read equals
``DataManager.load_data(..., mode="local")``; ``ktrdr data query`` answers SQL over it."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.data.data_manager import DataManager
from ktrdr.data.external_data_interface import OHLCV_COLUMNS
from ktrdr.data.ib_data_adapter import IbDataAdapter

UTC = timezone.utc
README = Path(__file__).resolve().parents[2] / "README.md"
START, END = datetime(2023, 9, 1, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)
LOADS = [(["AAPL", "EUR.USD", "SPY", "GBP.USD"], "1h"), (["AAPL", "MSFT", "USD.JPY"], "1d"),
         (["IBM"], "1w")]


def readme_snippet(tool: str) -> str:
    """The README's ``python`` block of "Querying the dataset" that imports ``tool``."""
    text = README.read_text()
    section = text.split("### Querying the dataset", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    [block] = [b for b in blocks if re.search(rf"^import {tool}\b", b, flags=re.M)]
    return block


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, farm):
    """``data/`` (the README's path) with IB-labelled bars of 8 symbols in 3 timeframes,
    loaded from the simulator, and what ``load_data`` returns for each."""
    home = tmp_path_factory.mktemp("query")
    expected = {}
    with DataManager(home / "data", IbDataAdapter(farm=farm, source="ib")) as manager:
        for symbols, timeframe in LOADS:
            reports = manager.backfill(symbols, timeframe, START, END)
            assert all(r.ok and r.rows for r in reports), reports
            for symbol in symbols:
                expected[symbol, timeframe] = manager.load_data(symbol, timeframe,
                                                                mode="local")
    return home, expected


def as_frames(table: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """A query result (one row per bar, all symbols) split back into load_data's frames."""
    out = {}
    for (symbol, timeframe), rows in table.groupby(["symbol", "timeframe"], sort=True):
        index = pd.DatetimeIndex(rows["timestamp"]).tz_convert("UTC").as_unit("ns")
        frame = pd.DataFrame({c: rows[c].to_numpy(dtype="float64", na_value=np.nan)
                              for c in OHLCV_COLUMNS}, index=index.rename("timestamp"))
        out[str(symbol), str(timeframe)] = frame
    return out


def assert_same(read: dict, expected: dict) -> None:
    assert sorted(read) == sorted(expected)
    for key, frame in expected.items():
        pd.testing.assert_frame_equal(read[key], frame, check_freq=False, obj=str(key))
    forex = read["EUR.USD", "1h"]
    assert forex["volume"].isna().all() and len(forex) > 1000  # IB's -1 is null


def test_the_readme_duckdb_snippet_reads_what_load_data_returns(dataset, monkeypatch):
    pytest.importorskip("duckdb")
    home, expected = dataset
    monkeypatch.chdir(home)
    scope: dict = {}
    exec(compile(readme_snippet("duckdb"), "README.md (duckdb)", "exec"), scope)
    bars = scope["bars"]
    assert str(bars["timestamp"].dtype).startswith("datetime64[us")  # microseconds, no loss
    assert_same(as_frames(bars), expected)


def test_the_readme_polars_snippet_reads_what_load_data_returns(dataset, monkeypatch):
    pl = pytest.importorskip("polars")
    home, expected = dataset
    monkeypatch.chdir(home)
    scope: dict = {}
    exec(compile(readme_snippet("polars"), "README.md (polars)", "exec"), scope)
    bars = scope["bars"]
    assert bars.schema["timestamp"] == pl.Datetime("us", "UTC")
    assert bars.schema["symbol"] == pl.String and set(bars["source"].unique()) == {"ib"}
    assert_same(as_frames(bars.to_pandas()), expected)


def test_ktrdr_data_query(dataset):
    pytest.importorskip("duckdb")
    home, expected = dataset
    data = str(home / "data")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "query", "--data-dir", data, "--format", "json",
                                 "SELECT symbol, timeframe, count(*) AS n, "
                                 "count(volume) AS with_volume FROM bars GROUP BY ALL"])
    assert result.exit_code == 0, result.output
    counts = {(r["symbol"], r["timeframe"]): (r["n"], r["with_volume"])
              for r in json.loads(result.output)}
    assert counts == {key: (len(f), int(f["volume"].notna().sum()))
                      for key, f in expected.items()}
    result = runner.invoke(app, ["data", "query", "--data-dir", data,
                                 "SELECT max(close) FROM bars WHERE symbol = '700@SEHK'"])
    assert result.exit_code == 0 and "(1 row(s))" in result.output
    result = runner.invoke(app, ["data", "query", "--data-dir", data, "SELEKT 1"])
    assert result.exit_code == 2 and "the query failed" in result.output
    result = runner.invoke(app, ["data", "query", "--sim", "--data-dir", data,
                                 "SELECT count(*) AS n FROM bars", "--format", "csv"])
    assert result.exit_code == 0 and result.output.splitlines() == ["n", "0"]
