"""``ktrdr data ...`` end to end on the embedded simulated gateway, and a backfill killed with
SIGKILL mid-way that a re-run completes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import psutil
import pytest
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.data.data_manager import DataManager
from ktrdr.data.store import BarStore

from .conftest import model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc
runner = CliRunner()


def test_backfill_show_and_gaps_on_the_simulator(tmp_path):
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["data", "backfill", "AAPL", "EUR.USD", "NOSUCH", "-t", "1d",
                                 "--start", "2023-01-01", "--end", "2024-01-01", "--sim",
                                 "--data-dir", data, "--farm-status"])
    assert result.exit_code == 1, result.output  # NOSUCH failed, the others did not
    assert "2 of 3 symbols ok" in result.output and "NOSUCH" in result.output
    assert "farm" in result.output and "submitted" in result.output
    result = runner.invoke(app, ["data", "show", "AAPL", "1d", "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert "rows: 250" in result.output and "source: sim" in result.output
    result = runner.invoke(app, ["data", "gaps", "EUR.USD", "1d", "--start", "2023-01-01",
                                 "--end", "2024-01-01", "--sim", "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert "0 missing range(s)" in result.output


@pytest.mark.parametrize("args,code,text", [
    (["data", "load", "../etc/passwd", "1h"], 2, "invalid symbol"),
    (["data", "load", "AAPL", "2h"], 2, "unsupported timeframe"),
    (["data", "load", "AAPL", "1h", "--start", "2024-02-01", "--end", "2024-01-01"], 2,
     "not after start"),
    (["data", "show", "AAPL", "1h"], 1, "nothing stored"),
])
def test_bad_input_exit_codes(tmp_path, args, code, text):
    result = runner.invoke(app, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == code, result.output
    assert text in result.output
    assert list(tmp_path.iterdir()) == []


def test_corrupt_file_exit_code(tmp_path):
    (tmp_path / "AAPL_1h.parquet").write_bytes(b"garbage")
    result = runner.invoke(app, ["data", "show", "AAPL", "1h", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1 and "unreadable" in result.output
    assert (tmp_path / "AAPL_1h.parquet").read_bytes() == b"garbage"


SYMBOLS = ["AAPL", "MSFT", "NVDA", "SPY", "EUR.USD", "GBP.USD"]
START, END = datetime(2022, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)


def test_backfill_killed_mid_way_then_rerun(tmp_path, sim, provider):
    data = tmp_path / "data"
    # IB's pacing (5 requests per contract per 2 s) makes this take ~10 s: kill it early.
    cmd = [sys.executable, "-m", "ktrdr.cli", "data", "backfill", *SYMBOLS, "-t", "1h",
           "--start", START.isoformat(), "--end", END.isoformat(), "--sim", "--data-dir",
           str(data)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "IB_GATEWAY": ""})
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(data.glob("*.parquet"))) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        family = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
        _, alive = psutil.wait_procs(family, timeout=15)  # workers notice their parent died
        for child in alive:
            child.kill()
    assert not alive, f"left behind: {alive}"
    store = BarStore(data)
    partial = {s: store.read(s, "1h").frame for s, _ in store.list()}  # all readable
    assert 2 <= len(partial) and any(len(f) for f in partial.values())
    # The re-run (on the test's gateway: same market) fetches what is missing, nothing more.
    with DataManager(data, provider) as manager:
        reports = manager.backfill(SYMBOLS, "1h", START, END)
    assert all(r.ok and r.gaps_left == 0 for r in reports), reports
    assert 0 < sum(r.requests for r in reports) < len(SYMBOLS) * 24  # killed mid-way
    assert not [p for p in data.iterdir() if p.name.startswith(".tmp-")]
    for symbol in SYMBOLS:
        kind = "CASH" if "." in symbol else "STK"
        assert_matches_model(store.read(symbol, "1h").frame,
                             model_bars(sim, symbol, kind, "1 hour", START, END))


def test_listings_with_an_exchange_on_the_command_line(tmp_path):
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["data", "load", "700@sehk", "1d", "--start", "2024-01-02",
                                 "--end", "2024-07-01", "--mode", "full", "--sim",
                                 "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert "700@SEHK 1d:" in result.output and "0 gaps left" in result.output
    result = runner.invoke(app, ["data", "gaps", "700@SEHK", "1d", "--start", "2024-01-02",
                                 "--end", "2024-07-01", "--sim", "--data-dir", data])
    assert result.exit_code == 0, result.output
    assert "0 missing range(s)" in result.output
    result = runner.invoke(app, ["data", "show", "700@SEHK", "1d", "--data-dir", data])
    assert result.exit_code == 0 and "Asia/Hong_Kong" in result.output, result.output
