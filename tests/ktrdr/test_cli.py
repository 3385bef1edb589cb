"""``ktrdr data ...`` end to end on the embedded simulated gateway: the command-line grammar
(dates, options, exit codes, one-line errors), progress, a backfill killed with SIGKILL mid-way
and one stopped with Ctrl-C, each completed by a re-run."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import psutil
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.cli_progress import ProgressView, saved_line
from ktrdr.data.data_manager import BACKFILL_DEFAULT, DataManager, ProgressEvent
from ktrdr.data.store import BarStore
from ktrdr.sim import clikit
from tests.cli_helpers import (
    clean_env,
    free_port,
    interrupt,
    lines,
    one_error_line,
    pacer_segment,
    restore_logging,  # noqa: F401 (a fixture)
    run,
    wait_gone,
)
from tests.farm.test_cli_fetch import parameters_without_help

from .conftest import kind_of, model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc
runner = CliRunner()
pytestmark = pytest.mark.usefixtures("restore_logging")


def test_backfill_show_and_gaps_on_the_simulator(tmp_path):
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["data", "backfill", "AAPL", "EUR.USD", "NOSUCH", "-t", "1d",
                                 "--start", "2023-01-01", "--end", "2024-01-01", "--sim",
                                 "--data-dir", data, "--farm-status"])
    assert result.exit_code == 1, result.output  # NOSUCH failed, the others did not
    assert "2 of 3 symbols ok" in result.output and "NOSUCH" in result.output
    assert "farm" in result.output and "submitted" in result.output
    result = runner.invoke(app, ["data", "show", "AAPL", "1d", "--data-dir", data, "--sim"])
    assert result.exit_code == 0, result.output
    assert "rows: 250" in result.output and "source: sim" in result.output
    # The simulator's bars live in their own dataset: IB's has nothing for AAPL.
    result = runner.invoke(app, ["data", "show", "AAPL", "1d", "--data-dir", data])
    assert result.exit_code == 1 and "nothing stored" in result.output
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
            if len({p.parent for p in data.rglob("*.parquet")}) >= 2:  # two symbols' files
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
        alive = wait_gone(family, 15)  # workers notice their parent died
        for child in alive:
            child.kill()
    assert not alive, f"left behind: {alive}"
    store = BarStore(data, source="sim")
    partial = {s: store.read(s, "1h").frame for s, _ in store.list()}  # all readable
    assert 2 <= len(partial) and any(len(f) for f in partial.values())
    # The re-run (on the test's gateway: same market) fetches what is missing, nothing more.
    with DataManager(data, provider) as manager:
        reports = manager.backfill(SYMBOLS, "1h", START, END)
    assert all(r.ok and r.gaps_left == 0 for r in reports), reports
    assert 0 < sum(r.requests for r in reports) < len(SYMBOLS) * 24  # killed mid-way
    assert not [p for p in data.rglob(".tmp-*")]
    for symbol in SYMBOLS:
        assert_matches_model(store.read(symbol, "1h").frame,
                             model_bars(sim, symbol, kind_of(symbol), "1 hour", START, END))


FORMS = "20240102 16:00:00 US/Eastern"  # one of the accepted forms every date error lists


@pytest.mark.parametrize("args,text", [
    (["data", "load", "AAPL", "1h", "--start", "01-02-2024"], "day and month order is ambiguous"),
    (["data", "backfill", "AAPL", "--end", "2024/01/01"], "not a form this command reads"),
    (["data", "gaps", "AAPL", "1h", "--start", "2024-13-01"], "not a real date"),
    (["data", "load", "AAPL", "1h", "--mode", "everything"], "--mode 'everything'"),
    (["data", "backfill", "AAPL", "-t", "2h"], "unsupported timeframe"),
    (["data", "load", "AAPL", "1h", "--type", "bond"], "--type 'bond'"),
    (["data", "backfill", "AAPL", "--sim", "--host", "10.0.0.1"], "drop one of them"),
    (["data", "backfill", "AAPL", "--sim", "--sim-latency", "fast"], "--sim-latency 'fast'"),
    (["data", "backfill", "AAPL", "--sim", "--sim-latency", "ib/0"], "'ib/F' (it divided"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, text):
    result = runner.invoke(app, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert text in line
    if "form" in text or "ambiguous" in text:
        assert FORMS in line  # the accepted forms, listed
    assert list(tmp_path.iterdir()) == []


def test_ib_form_with_a_zone_is_that_zone(tmp_path):
    """09:30 New York on 2 January 2024 is 14:30 UTC: the first bar of the session."""
    data = str(tmp_path / "data")
    result = runner.invoke(app, ["data", "load", "AAPL", "1h", "--start",
                                 "20240102 09:30:00 US/Eastern", "--end", "2024-01-03T00:00Z",
                                 "--mode", "full", "--sim", "--data-dir", data])
    assert result.exit_code == 0, result.output
    frame = BarStore(data, source="sim").read("AAPL", "1h").frame
    assert frame.index[0] == datetime(2024, 1, 2, 14, 30, tzinfo=UTC)
    assert frame.index[-1] == datetime(2024, 1, 2, 20, 0, tzinfo=UTC)


def test_ib_port_not_a_number_is_one_line_exit_2(tmp_path):
    for command in (["data", "backfill", "AAPL"], ["data", "load", "AAPL", "1d"], ["api"]):
        result = runner.invoke(app, [*command, *(["--data-dir", str(tmp_path)] if
                                                 command[0] == "data" else [])],
                               env={"IB_PORT": "abc", "IB_GATEWAY": ""})
        assert result.exit_code == 2, result.output
        line = one_error_line(result.output)
        assert "IB_PORT='abc' is not a port number" in line and "invalid literal" not in line


@pytest.mark.parametrize("command", [["data", "backfill", "AAPL", "-t", "1d"],
                                     ["data", "load", "AAPL", "1h"]])
def test_refused_connection_is_one_line_at_once(tmp_path, command):
    port = free_port()
    done = run("ktrdr.cli", *command, "--data-dir", str(tmp_path),
               env=clean_env(IB_PORT=str(port)))
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert f"127.0.0.1:{port} (IB_HOST:IB_PORT): connection refused" in line
    assert "--sim" in line and "current time" not in line
    assert done.stdout == ""


def test_verbose_anywhere_and_version(tmp_path):
    data = str(tmp_path / "data")
    quiet = runner.invoke(app, ["data", "load", "AAPL", "1d", "--sim", "--data-dir", data])
    assert quiet.exit_code == 0 and "INFO" not in quiet.output
    for args in (["-v", "data", "load"], ["data", "-v", "load"], ["data", "load", "-v"]):
        result = runner.invoke(app, [*args, "AAPL", "1d", "--sim", "--data-dir", data])
        assert result.exit_code == 0, result.output
        assert "INFO" in result.output and "simulated IB Gateway on" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ktrdr {clikit.package_version()}"


def _plain(text: str) -> str:
    """Help text without its box drawing and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_help_for_everything_with_defaults():
    assert parameters_without_help(typer.main.get_command(app)) == []
    result = runner.invoke(app, ["data", "backfill", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = _plain(result.output)
    for timeframe, depth in BACKFILL_DEFAULT.items():  # the default depth, read from the source
        days = depth.days
        words = f"{days // 365} year{'s' if days // 365 != 1 else ''}" if days % 365 == 0 \
            else f"{days} days"
        assert f"{timeframe} {words}" in text, (timeframe, text)
    for default in ("[default: 1h]", "(now)", "(IB_HOST or 127.0.0.1)", "(IB_PORT or 4002)",
                    "(KTRDR_DATA_DIR or ./data)"):
        assert default in text, default
    load = _plain(runner.invoke(app, ["data", "load", "--help"], env={"COLUMNS": "200"}).output)
    assert "Symbol: AAPL, EUR.USD" in load and "Timeframe: 1m 5m 15m 30m 1h 4h 1d 1w" in load
    assert "[default: tail]" in load


def test_backfill_progress_lines_when_not_a_terminal(tmp_path):
    result = runner.invoke(app, ["data", "backfill", "AAPL", "EUR.USD", "-t", "1d", "--start",
                                 "2020-01-01", "--end", "2024-01-01", "--sim", "--data-dir",
                                 str(tmp_path), "--sim-latency", "ib/50"])
    assert result.exit_code == 0, result.output
    for symbol in ("AAPL", "EUR.USD"):
        assert f"{symbol} 1d: 4 requests to make" in result.output
        assert f"{symbol} 1d: done, 4/4 requests, " in result.output
    again = runner.invoke(app, ["data", "backfill", "AAPL", "-t", "1d", "--start", "2020-01-01",
                                "--end", "2024-01-01", "--sim", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0 and "AAPL 1d: nothing missing" in again.output


def test_load_progress_lines_when_not_a_terminal(tmp_path):
    result = runner.invoke(app, ["data", "load", "AAPL", "1d", "--start", "2020-01-01",
                                 "--end", "2024-01-01", "--mode", "full", "--sim",
                                 "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "AAPL 1d: 4 requests to make" in result.output
    assert "AAPL 1d: done, 4/4 requests, 1,006 bars" in result.output  # NYSE, 2020-2023
    assert "AAPL 1d: 1,006 rows" in result.output


def test_live_bars_with_log_records_above_them():
    """On a terminal: one bar per symbol with its ETA, and a warning logged meanwhile goes
    through the same console (above the bars, not through them)."""
    buffer = io.StringIO()
    screen = Console(file=buffer, force_terminal=True, width=120, color_system=None)
    clikit.setup_logging(False, screen)
    view = ProgressView(screen, "1h")
    assert view.live
    with view:
        view(ProgressEvent("AAPL", 0, 10))
        view(ProgressEvent("EUR.USD", 0, 0))  # nothing missing
        view(ProgressEvent("AAPL", 6, 10, rows=600))
        logging.getLogger("ktrdr.data.data_manager").warning("AAPL 1h range failed: test")
        view(ProgressEvent("AAPL", 8, 10, rows=0, error="boom"))
        view(ProgressEvent("AAPL", 10, 10, rows=400))
    out = buffer.getvalue()
    assert "AAPL 1h range failed: test" in out and "WARNING" in out
    assert "10/10" in out and "1,000 bars" in out and "ETA" in out and "EUR.USD 1h" in out
    assert view.saved() == {"AAPL": 1000}
    assert saved_line(view.saved(), "SIGINT", "/data") == (
        "interrupted (SIGINT): saved 1,000 bars of 1 symbol (AAPL 1,000) in /data; run the "
        "same command again to resume")
    assert saved_line({}, "SIGTERM", "/data").startswith(
        "interrupted (SIGTERM): nothing was saved yet")


def test_events_after_the_view_stops_count_bars_and_print_nothing():
    """A run winding down after Ctrl-C: what still lands counts for the saved line, nothing is
    printed after the bars stopped, and the cancelled requests' errors are not failures."""
    buffer = io.StringIO()
    view = ProgressView(Console(file=buffer, width=120), "1h", live=False)
    with view:
        view(ProgressEvent("AAPL", 0, 10))
        view(ProgressEvent("AAPL", 3, 10, rows=300, error=None))
    shown = buffer.getvalue()
    view(ProgressEvent("AAPL", 4, 10, rows=100))
    view(ProgressEvent("AAPL", 5, 10, error="cancelled"))
    assert buffer.getvalue() == shown and "failed" not in shown
    assert view.saved() == {"AAPL": 400}


def test_api_refuses_an_open_address_without_a_token():
    result = runner.invoke(app, ["api", "--host", "0.0.0.0"], env={"KTRDR_API_TOKEN": ""})
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert "refusing to listen on 0.0.0.0 without a token" in line
    assert "KTRDR_API_TOKEN" in line and "--insecure" in line


@pytest.mark.parametrize("value", ["soon", "0"])
def test_api_refuses_a_malformed_setting(value):
    result = runner.invoke(app, ["api"], env={"KTRDR_API_MAINTENANCE_GRACE": value})
    assert result.exit_code == 2
    line = one_error_line(result.output)
    assert f"KTRDR_API_MAINTENANCE_GRACE={value!r}" in line and "seconds" in line


#: 4 symbols x 8 years of hours: 384 requests, 50 open at a time and 1 s each at the
#: gateway, so a Ctrl-C lands with hundreds still to go (and the last re-run is not slow).
INTERRUPTED = ["AAPL", "MSFT", "EUR.USD", "SPY"]


def _backfill(data, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ktrdr.cli", "data", "backfill", *INTERRUPTED, "-t", "1h",
            "--start", "2021-06-01", "--end", "2024-06-01", "--sim", "--data-dir", str(data),
            *extra]


def test_backfill_interrupted_then_resumed(tmp_path):
    """Ctrl-C mid-backfill: one line says what was saved, exit 130, nothing left running;
    the re-run completes and stores exactly what an uninterrupted run stores."""
    data = tmp_path / "data"
    stopped = interrupt(_backfill(data, "--sim-latency", "1"),
                        lambda: any(data.rglob("*.parquet")), signal.SIGINT)
    print(f"ktrdr data backfill: exit {stopped.seconds:.2f} s after SIGINT")
    said = lines(stopped.stderr)
    port = int(said[0].rsplit(":", 1)[1])  # "simulated IB Gateway on 127.0.0.1:PORT"
    segment = pacer_segment(port)
    pacer_left = segment.exists()
    for path in (segment, segment.with_name(segment.name + ".lock")):
        path.unlink(missing_ok=True)  # this test's own leftover, whatever it asserts below
    assert stopped.returncode == 130, stopped.stderr
    stops = [line for line in said if line.startswith("interrupted")]
    assert len(stops) == 1 and said[-1] == stops[0], stopped.stderr
    assert stops[0].startswith("interrupted (SIGINT): saved ")
    assert stops[0].endswith("; run the same command again to resume")
    assert "Traceback" not in stopped.stderr and "Task was destroyed" not in stopped.stderr
    assert not stopped.left, f"left behind: {stopped.left}"
    assert not pacer_left, "the farm's shared pacer outlived the command"
    store = BarStore(data, source="sim")
    saved = sum(len(store.read(s, "1h").frame) for s in INTERRUPTED)
    assert 0 < saved
    again = run("ktrdr.cli", *_backfill(data)[3:])
    assert again.returncode == 0, again.stderr
    reference = tmp_path / "reference"
    whole = run("ktrdr.cli", *_backfill(reference)[3:])
    assert whole.returncode == 0, whole.stderr
    expected = BarStore(reference, source="sim")
    for symbol in INTERRUPTED:
        got, want = store.read(symbol, "1h").frame, expected.read(symbol, "1h").frame
        assert len(want) > 1000 and got.equals(want), symbol


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
    result = runner.invoke(app, ["data", "show", "700@SEHK", "1d", "--data-dir", data, "--sim"])
    assert result.exit_code == 0 and "Asia/Hong_Kong" in result.output, result.output
