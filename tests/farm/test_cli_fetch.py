"""``ibfarm fetch`` against an embedded simulated gateway."""

from __future__ import annotations

import pyarrow.parquet as pq
from typer.testing import CliRunner

from ibfarm.bars import BAR_SCHEMA
from ibfarm.cli import app

runner = CliRunner()


def test_fetch_prints_a_table():
    result = runner.invoke(app, ["fetch", "AAPL", "--bar-size", "1 hour", "--duration", "2 D",
                                 "--sim"])
    assert result.exit_code == 0, result.output
    assert "bars of AAPL (1 hour, 2 D)" in result.output and "close" in result.output


def test_fetch_writes_parquet(tmp_path):
    out = tmp_path / "eurusd.parquet"
    result = runner.invoke(app, ["fetch", "EUR.USD", "--bar-size", "1 day", "--duration", "1 M",
                                 "--what-to-show", "MIDPOINT", "--sim", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == BAR_SCHEMA.names and table.num_rows > 15  # Parquet: ms stamps


def test_fetch_reports_typed_errors():
    result = runner.invoke(app, ["fetch", "NOSUCHSYM", "--sim"])
    assert result.exit_code == 1
    assert "IB error 200" in result.output and "contract_not_found" in result.output
