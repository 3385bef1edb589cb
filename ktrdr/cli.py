"""``ktrdr`` on the command line.

``ktrdr data load | backfill | show | gaps``; ``--sim`` (or ``IB_GATEWAY=sim``) runs them on
an embedded simulated IB Gateway. Exit codes: 0 all went well, 1 something failed, 2 bad input.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

app = typer.Typer(help="ktrdr: historical market data, fetched once and stored locally.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Load, backfill and inspect stored bars.", no_args_is_help=True)
app.add_typer(data_app, name="data")

#: Tables keep their columns readable when the output is not a terminal (pipes, make).
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=140)

SIM_HELP = "Run on an embedded simulated IB Gateway (also: IB_GATEWAY=sim)."
DIR_HELP = "Data directory (default: KTRDR_DATA_DIR or ./data)."
TYPE_HELP = "Instrument type: stock, forex, future or index (default: guessed)."


@app.command()
def version() -> None:
    """Print ktrdr's version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("ibfarm"))


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- plumbing


@contextlib.contextmanager
def _manager(data_dir: str | None, sim: bool, latency: float = 0.0,
             workers: int | None = None) -> Iterator[tuple[Any, Any]]:
    """A DataManager on IB (from the environment) or on an embedded simulated gateway."""
    from ktrdr.data.data_manager import DataManager
    from ktrdr.sim import EmbeddedSim, sim_requested

    embedded = None
    provider = None
    try:
        if sim_requested(sim):
            embedded = EmbeddedSim(latency=latency, max_workers=workers or 4).start()
            provider = embedded.provider()
            err_console.print(f"[dim]simulated IB Gateway on 127.0.0.1:{embedded.gateway.port}"
                              f"[/dim]")
        else:
            from ktrdr.data.ib_data_adapter import IbDataAdapter

            provider = IbDataAdapter.from_env(**({"max_workers": workers} if workers else {}))
        manager = DataManager(data_dir, provider)
        try:
            yield manager, embedded
        finally:
            manager.close()
    finally:
        if embedded is not None:
            embedded.stop()
        elif provider is not None:
            provider.shutdown()


def _fail(exc: BaseException) -> typer.Exit:
    """Print ``exc`` plainly and pick the exit code (2: bad input, 1: anything else)."""
    from ktrdr.data.data_manager import InvalidRangeError
    from ktrdr.data.external_data_interface import DataProviderError
    from ktrdr.data.store import DataCorruptError, InvalidSymbolError
    from ktrdr.data.timeframes import TimeframeError

    err_console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
    bad_input = (InvalidSymbolError, TimeframeError, InvalidRangeError)
    if isinstance(exc, DataProviderError | DataCorruptError):
        return typer.Exit(1)
    return typer.Exit(2 if isinstance(exc, bad_input) else 1)


def _when(value: Any) -> str:
    if value is None:
        return "-"
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return stamp.strftime("%Y-%m-%d %H:%M")


def summary_table(reports: list, title: str = "summary") -> Table:
    """Rows, range, gaps left, requests, time and status per symbol."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("symbol", "left"), ("tf", "left"), ("rows", "right"),
                          ("first", "left"), ("last", "left"), ("gaps left", "right"),
                          ("requests", "right"), ("time s", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    for r in reports:
        status = "[green]ok[/green]" if r.ok else f"[red]{r.error}[/red]"
        if r.ok and r.clamped_start is not None:
            status += f" [yellow](start clamped to {_when(r.clamped_start)})[/yellow]"
        table.add_row(r.symbol, r.timeframe, f"{r.rows:,}", _when(r.start), _when(r.end),
                      str(r.gaps_left), str(r.requests), f"{r.seconds:.2f}", status)
    return table


def farm_table(status: dict) -> Table:
    """The farm's workers and totals."""
    table = Table(title="farm", title_justify="left")
    for name in ("worker", "pid", "client id", "state", "served", "errors", "idle s",
                 "RSS MB"):
        table.add_column(name, justify="right")
    for w in status.get("workers", []):
        rss = w.get("rss_bytes")
        table.add_row(str(w["worker_id"]), str(w["pid"]), str(w["client_id"]), w["state"],
                      str(w["served"]), str(w["errors"]), f"{w['idle_s']:.1f}",
                      "-" if rss is None else f"{rss / 1e6:.0f}")
    farm = status.get("farm", {})
    table.caption = ", ".join(f"{k} {farm[k]}" for k in
                              ("submitted", "completed", "failed", "retried", "spawned")
                              if k in farm)
    return table


def run_backfill(manager: Any, symbols: list[str], timeframe: str, start: str | None,
                 end: str | None, instrument_type: str | None = None) -> list:
    """``manager.backfill`` with a progress bar per symbol (requests landed of planned, rows,
    time so far and left; updated as each request lands)."""
    columns = (TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rows]:>8} rows"), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def progress(event) -> None:
            if event.symbol not in tasks:
                tasks[event.symbol] = bar.add_task(event.symbol, total=event.requests_total,
                                                   rows=0)
            task = tasks[event.symbol]
            rows = bar.tasks[task].fields["rows"] + event.rows
            bar.update(task, completed=event.requests_done, total=event.requests_total,
                       rows=rows, description=event.symbol + (" !" if event.error else ""))

        return manager.backfill(symbols, timeframe, start, end, progress=progress,
                                instrument_type=instrument_type)


# --------------------------------------------------------------------------- commands


@data_app.command("load")
def load(symbol: str, timeframe: str,
         start: str = typer.Option(None, "--start", help="Start (UTC), e.g. 2024-01-01."),
         end: str = typer.Option(None, "--end", help="End (UTC, exclusive); default now."),
         mode: str = typer.Option("tail", "--mode", help="local, tail, backfill or full."),
         instrument_type: str = typer.Option(None, "--type", help=TYPE_HELP),
         data_dir: str = typer.Option(None, "--data-dir", help=DIR_HELP),
         sim: bool = typer.Option(False, "--sim", help=SIM_HELP),
         rows: int = typer.Option(5, "--rows", help="Last rows to print.")) -> None:
    """Load one symbol, fetching what MODE asks for, and print its last bars."""
    began = time.monotonic()
    try:
        with _manager(data_dir, sim and mode != "local") as (manager, _):
            frame = manager.load_data(symbol, timeframe, start, end, mode=mode,
                                      instrument_type=instrument_type)
            summary = manager.get_data_summary(symbol, timeframe)
    except Exception as exc:
        raise _fail(exc) from None
    clamped = frame.attrs.get("clamped_start")
    if clamped is not None:
        err_console.print(f"[yellow]start moved to {_when(clamped)}: no data before it[/yellow]")
    if rows:
        console.print(frame.tail(rows).to_string())
    console.print(
        f"{summary['symbol']} {summary['timeframe']}: {len(frame):,} rows "
        f"({_when(frame.index[0] if len(frame) else None)} .. "
        f"{_when(frame.index[-1] if len(frame) else None)}), "
        f"{frame.attrs.get('requests', 0)} requests, {frame.attrs.get('gaps_left', 0)} gaps left, "
        f"{time.monotonic() - began:.2f} s -> {summary['path']}", highlight=False)


@data_app.command("backfill")
def backfill(symbols: Annotated[list[str], typer.Argument(help="Symbols, e.g. AAPL EUR.USD.")],
             timeframe: str = typer.Option("1h", "--timeframe", "-t", help="Timeframe."),
             start: str = typer.Option(None, "--start", help="Start (UTC)."),
             end: str = typer.Option(None, "--end", help="End (UTC, exclusive); default now."),
             instrument_type: str = typer.Option(None, "--type", help=TYPE_HELP),
             data_dir: str = typer.Option(None, "--data-dir", help=DIR_HELP),
             sim: bool = typer.Option(False, "--sim", help=SIM_HELP),
             latency: float = typer.Option(0.0, "--sim-latency",
                                           help="Simulated gateway's answer latency (s)."),
             workers: int = typer.Option(None, "--workers", help="Farm worker processes."),
             show_farm: bool = typer.Option(False, "--farm-status",
                                            help="Print the farm's status at the end.")) -> None:
    """Backfill many symbols in parallel; a re-run fetches only what is still missing."""
    began = time.monotonic()
    try:
        with _manager(data_dir, sim, latency, workers) as (manager, embedded):
            reports = run_backfill(manager, symbols, timeframe, start, end, instrument_type)
            status = embedded.farm_status() if embedded is not None else \
                manager.provider.farm_status()
    except Exception as exc:
        raise _fail(exc) from None
    console.print(summary_table(reports, f"backfill {timeframe}"))
    if show_farm and status:
        console.print(farm_table(status))
    failed = [r for r in reports if not r.ok]
    console.print(f"{len(reports) - len(failed)} of {len(reports)} symbols ok, "
                  f"{sum(r.rows for r in reports):,} rows, "
                  f"{sum(r.requests for r in reports)} requests, "
                  f"{time.monotonic() - began:.1f} s", highlight=False)
    if failed:
        raise typer.Exit(1)


@data_app.command("show")
def show(symbol: str, timeframe: str,
         rows: int = typer.Option(10, "--rows", help="Last rows to print."),
         data_dir: str = typer.Option(None, "--data-dir", help=DIR_HELP)) -> None:
    """Show what is stored for a symbol (no provider needed)."""
    from ktrdr.data.data_manager import DataManager

    try:
        manager = DataManager(data_dir, provider=None)
        summary = manager.get_data_summary(symbol, timeframe)
        frame = manager.store.read(summary["symbol"], summary["timeframe"]).frame
    except Exception as exc:
        raise _fail(exc) from None
    if not summary["rows"]:
        err_console.print(f"nothing stored for {summary['symbol']} {summary['timeframe']} "
                          f"({summary['path']})")
        raise typer.Exit(1)
    for key in ("symbol", "timeframe", "rows", "start", "end", "time_zone", "source", "gateway",
                "fetched_at", "path"):
        console.print(f"{key:>10}: {summary[key]}", highlight=False)
    console.print(frame.tail(rows).to_string())


@data_app.command("gaps")
def gaps(symbol: str, timeframe: str,
         start: str = typer.Option(None, "--start", help="Start (UTC); default first bar."),
         end: str = typer.Option(None, "--end", help="End (UTC, exclusive); default now."),
         instrument_type: str = typer.Option(None, "--type", help=TYPE_HELP),
         data_dir: str = typer.Option(None, "--data-dir", help=DIR_HELP),
         sim: bool = typer.Option(False, "--sim", help=SIM_HELP)) -> None:
    """List the missing ranges (trading sessions with no stored bars)."""
    try:
        with _manager(data_dir, sim) as (manager, _):
            found = manager.find_gaps(symbol, timeframe, start, end, instrument_type)
    except Exception as exc:
        raise _fail(exc) from None
    table = Table(title=f"gaps {symbol.upper()} {timeframe}", title_justify="left")
    table.add_column("from")
    table.add_column("to")
    table.add_column("days", justify="right")
    for a, b in found:
        table.add_row(_when(a), _when(b), f"{(b - a).total_seconds() / 86400:.1f}")
    console.print(table)
    console.print(f"{len(found)} missing range(s)")


@app.command("api")
def api(host: str = typer.Option("127.0.0.1", "--host",
                                 help="Address to bind (loopback unless told otherwise)."),
        port: int = typer.Option(8000, "--port", help="TCP port."),
        sim: bool = typer.Option(False, "--sim", help=SIM_HELP),
        log_level: str = typer.Option("info", "--log-level",
                                      help="debug, info, warning or error.")) -> None:
    """Serve the HTTP API (KTRDR_API_TOKEN, when set, is required as a bearer token)."""
    from ktrdr.api.serve import serve

    serve(host=host, port=port, sim=sim, log_level=log_level)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
