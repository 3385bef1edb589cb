"""``ibfarm fetch`` against an embedded simulated gateway, and the command-line grammar it shares
with ``ktrdr``: dates, options, exit codes, one-line errors, hints, Ctrl-C."""

from __future__ import annotations

import signal
import sys
from datetime import datetime, timezone

import click
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from ibfarm import clikit
from ibfarm.bars import BAR_SCHEMA
from ibfarm.cli import app
from tests.cli_helpers import (
    clean_env,
    free_port,
    interrupt,
    lines,
    one_error_line,
    pacer_segment,
    restore_logging,  # noqa: F401 (a fixture)
    run,
)

pytestmark = pytest.mark.usefixtures("restore_logging")
runner = CliRunner()
UTC = timezone.utc


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


FORMS = "20240102 16:00:00 US/Eastern"  # one of the accepted forms every date error lists


@pytest.mark.parametrize("args,text", [
    (["--end", "2024/01/01"], "not a form this command reads"),
    (["--end", "01-02-2024"], "day and month order is ambiguous"),
    (["--end", "2024-02-30"], "not a real date"),
    (["--end", "20240102 16:00:00 Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
    (["--bar-size", "7 min"], "illegal bar size '7 min'"),
    (["--duration", "400 D"], "at most 365 D"),
    (["--duration", "1 day"], "illegal duration"),
    (["--what-to-show", "PRICE"], "--what-to-show 'PRICE'"),
    (["--sec-type", "BOND"], "--sec-type 'BOND'"),
    (["--sim", "--port", "4002"], "drop one of them"),
    (["--port", "70000"], "--port='70000' is not a port number"),
])
def test_bad_input_is_one_line_and_exit_2(args, text):
    result = runner.invoke(app, ["fetch", "AAPL", *args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result.output)
    assert text in line
    if "--end" in args and "zone" not in text:
        assert FORMS in line and "2024-01-02T16:00Z" in line  # the accepted forms, listed
    assert isinstance(result.exception, SystemExit)  # not an exception escaping the command


def test_out_into_a_missing_directory(tmp_path):
    target = tmp_path / "nonexistent" / "x.parquet"
    result = runner.invoke(app, ["fetch", "AAPL", "--sim", "--out", str(target)])
    assert result.exit_code == 2
    assert "does not exist" in one_error_line(result.output)
    assert not target.parent.exists()


def test_ib_form_with_a_zone_is_that_zone(tmp_path):
    """16:00 New York on 2 January 2024 is 21:00 UTC: both spellings fetch the same bars."""
    tables = []
    for end in ("20240102 16:00:00 US/Eastern", "2024-01-02T21:00Z", "2024-01-02T16:00-05:00"):
        out = tmp_path / f"{len(tables)}.parquet"
        result = runner.invoke(app, ["fetch", "AAPL", "--bar-size", "1 hour", "--duration",
                                     "1 D", "--end", end, "--sim", "--out", str(out)])
        assert result.exit_code == 0, result.output
        tables.append(pq.read_table(out))
    stamps = tables[0].column("timestamp").to_pylist()
    assert stamps[-1] == datetime(2024, 1, 2, 20, 0, tzinfo=UTC)  # 15:00-16:00 New York
    assert all(t.equals(tables[0]) for t in tables[1:])


def test_forex_defaults_to_midpoint_and_says_so():
    result = runner.invoke(app, ["fetch", "EUR.USD", "--bar-size", "1 hour", "--duration",
                                 "2 D", "--sim"])
    assert result.exit_code == 0, result.output
    assert "EUR.USD is a forex pair: showing MIDPOINT bars" in result.output
    assert "no bars in that range" not in result.output
    assert int(result.output.strip().splitlines()[-1].split()[0]) > 20


def test_forex_trades_is_refused_with_a_hint():
    # IB refuses TRADES on forex: 162 "No historical market data for EUR/CASH@FXSUBPIP Last 1d"
    result = runner.invoke(app, ["fetch", "EUR.USD", "--what-to-show", "TRADES", "--sim"])
    assert result.exit_code == 1, result.output
    assert "162" in result.output and "CASH@" in result.output
    assert "hint: forex has no TRADES data" in result.output and "MIDPOINT" in result.output


def test_ib_port_not_a_number_is_one_line_exit_2():
    done = run("ibfarm.cli", "fetch", "AAPL", env=clean_env(IB_PORT="abc"))
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "IB_PORT='abc' is not a port number" in line and "invalid literal" not in line
    assert done.stdout == ""


def test_refused_connection_is_one_line_at_once():
    port = free_port()
    done = run("ibfarm.cli", "fetch", "AAPL", env=clean_env(IB_PORT=str(port)))
    assert done.returncode == 1, done.stderr
    line = one_error_line(done.stderr)
    assert f"127.0.0.1:{port} (IB_HOST:IB_PORT): connection refused" in line
    assert "--sim" in line and "current time" not in line


def test_verbose_anywhere_on_the_line():
    quiet = runner.invoke(app, ["fetch", "AAPL", "--sim", "--duration", "1 D"])
    assert quiet.exit_code == 0 and "INFO" not in quiet.output
    for args in (["-v", "fetch", "AAPL", "--sim"], ["fetch", "-v", "AAPL", "--sim"],
                 ["fetch", "AAPL", "--sim", "--verbose"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "INFO" in result.output and "simulated gateway listening" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ibfarm {clikit.package_version()}"


def parameters_without_help(command: click.Command, path: str = "") -> list[str]:
    """``command path --option`` for every argument and option that has no help text."""
    missing = []
    for param in command.params:
        if param.name in ("help",):
            continue
        if not (getattr(param, "help", None) or "").strip():
            missing.append(f"{path} {param.name}".strip())
    for name, sub in getattr(command, "commands", {}).items():
        missing += parameters_without_help(sub, f"{path} {name}")
    return missing


def test_every_argument_and_option_has_help():
    assert parameters_without_help(typer.main.get_command(app)) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_fetch_interrupted(make_gateway, signum):
    """Ctrl-C (or SIGTERM) while the bars are on their way: one line, 130 (143), nothing left
    running; the farm's shared pacer is gone with it."""
    gateway = make_gateway(latency=3.0)
    command = [sys.executable, "-m", "ibfarm.cli", "fetch", "AAPL", "--port", str(gateway.port),
               "--bar-size", "1 hour", "--duration", "2 D"]
    stopped = interrupt(command, lambda: gateway.stats()["open_requests"] >= 1, signum)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert lines(stopped.stderr) == [
        f"interrupted ({signal.Signals(signum).name}): nothing was written; the bars had not "
        f"arrived yet, so fetch them again"]
    assert stopped.stdout == "" and not stopped.left
    assert not pacer_segment(gateway.port).exists()
    print(f"ibfarm fetch: exit {stopped.seconds:.2f} s after {signal.Signals(signum).name}")
