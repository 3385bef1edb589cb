"""``ktrdr`` on the command line.

``ktrdr data load | backfill | show | gaps | migrate | query`` and ``ktrdr api``. ``--sim``
runs them on an embedded simulated IB Gateway and its own dataset; the data directory is
checked before anything starts (``BarStore.check_usable``: an unusable one is exit 2). The
grammar is ibfarm's
(``ibfarm.clikit``, reached through ``ktrdr.sim``): dates as ``ibfarm.dates`` reads them,
``--host/--port`` (the gateway a fetching command connects to; where ``ktrdr api`` listens),
``--sim`` (or ``IB_GATEWAY=sim``) for an embedded simulated IB Gateway, ``-v`` anywhere,
``--version``.

::

    options ──► parse_when / gateway_address / timeframe check ── bad ──► exit 2
       │        probe of IB_HOST:IB_PORT (not with --sim) ───── refused ──► one line, exit 1
       ▼
    StopOnSignal.run(CancellableRun(manager.backfill_async | load_data_async,
       │                            progress=ProgressView))   its own event loop, on a thread
       │        Ctrl-C / SIGTERM: the run's task is cancelled: the DataManager cancels the
       │        requests still queued in the farm or in flight at IB, saves what landed and
       │        ends (if it has not within the grace, adapter.abort() drops the farm's work);
       │        one line says what was saved; exit 130 / 143 (a re-run resumes: the store
       │        keeps every range that landed)
       ▼
    summary table; exit 0, or 1 when a symbol failed
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ktrdr.cli_progress import ProgressView, saved_line
from ktrdr.data.data_manager import BACKFILL_DEFAULT, MODES, TAIL_DEFAULT
from ktrdr.data.symbols import normalize_symbol
from ktrdr.data.timeframes import TIMEFRAMES
from ktrdr.sim import clikit, dates, parse_sim_latency

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds a stopped run gets, after the farm dropped its work, to save what it has.
SAVE_GRACE = 2.0

app = typer.Typer(cls=clikit.CommandLine,
                  help="ktrdr: historical market data, fetched once and stored locally.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Load, backfill and inspect stored bars.", no_args_is_help=True)
app.add_typer(data_app, name="data")

#: Tables keep their columns readable when the output is not a terminal (pipes, make).
console = Console() if sys.stdout.isatty() else Console(width=140)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=140)


def _span(delta: timedelta) -> str:
    days = delta.days
    if days % 365 == 0:
        years = days // 365
        return f"{years} year{'s' * (years != 1)}"
    return f"{days} days"


def _depths() -> str:
    """``BACKFILL_DEFAULT`` in words: how far back a backfill goes without --start."""
    known = [f"{tf} {_span(BACKFILL_DEFAULT[tf])}" for tf in TIMEFRAMES if tf in BACKFILL_DEFAULT]
    rest = [tf for tf in TIMEFRAMES if tf not in BACKFILL_DEFAULT]
    if rest:
        known.append(f"{' and '.join(rest)} everything")
    return ", ".join(known)


TIMEFRAME_LIST = " ".join(TIMEFRAMES)
DIR_HELP = "Data directory: a path or a URL (s3://bucket/prefix)."
DIR_DEFAULT = "KTRDR_DATA_DIR or ./data"
TYPE_HELP = "Instrument type: stock, forex, future or index."
START_HELP = f"Start: {dates.HELP}."
END_HELP = "End, exclusive (same forms as --start)."
BACKFILL_START = f"by timeframe: {_depths()}; never before the first data"
TAIL_START = f"the last stored bar, else {TAIL_DEFAULT.days} days back"

Symbol = Annotated[str, typer.Argument(
    help="Symbol: AAPL, EUR.USD (forex) or SYMBOL@EXCHANGE (VOD@LSE).", show_default=False)]
Timeframe = Annotated[str, typer.Argument(help=f"Timeframe: {TIMEFRAME_LIST}.",
                                          show_default=False)]
Host = Annotated[str | None, typer.Option("--host", help=clikit.HOST_HELP,
                                          show_default=clikit.HOST_DEFAULT)]
Port = Annotated[int | None, typer.Option("--port", help=clikit.PORT_HELP,
                                          show_default=clikit.PORT_DEFAULT)]
Sim = Annotated[bool, typer.Option("--sim", help=clikit.SIM_HELP)]
DataDir = Annotated[str | None, typer.Option("--data-dir", help=DIR_HELP,
                                             show_default=DIR_DEFAULT)]
InstrumentType = Annotated[str | None, typer.Option("--type", help=TYPE_HELP,
                                                    show_default="guessed from the symbol")]
End = Annotated[str | None, typer.Option("--end", help=END_HELP, show_default="now")]


@app.command()
def version() -> None:
    """Print ktrdr's version."""
    typer.echo(clikit.package_version())


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help=clikit.VERBOSE_HELP),
          show_version: bool = clikit.version_option("ktrdr")) -> None:
    clikit.setup_logging(verbose, err_console)


# --------------------------------------------------------------------------- plumbing


def _check_store(data_dir: str | None, sim: bool, writable: bool = True) -> None:
    """Stop with ``StoreUnusableError`` (exit 2) before starting anything when the data
    directory cannot be used."""
    from ktrdr.data.store import IB_SOURCE, SIM_SOURCE, BarStore
    source = SIM_SOURCE if clikit.sim_requested(sim) else IB_SOURCE
    BarStore(data_dir, source, migrate=False).check_usable(writable=writable)


@contextlib.contextmanager
def _manager(data_dir: str | None, gateway: Any, latency: dict[str, Any] | None = None,
             workers: int | None = None, fetch: bool = True
             ) -> Iterator[tuple[Any, Any, Any]]:
    """``(DataManager, its IbDataAdapter, the embedded simulator or None)`` on the gateway
    ``gateway`` names, or on an embedded simulated one; with ``fetch=False`` nothing is
    started (the simulator's dataset is still the one read)."""
    from ktrdr.data.data_manager import DataManager
    from ktrdr.data.ib_data_adapter import IbDataAdapter
    from ktrdr.sim import EmbeddedSim

    embedded = None
    adapter = None
    _check_store(data_dir, gateway.sim, writable=fetch)
    try:
        if not fetch:
            # never connected (nothing is fetched): it only names the dataset to read
            adapter = IbDataAdapter(source="sim" if gateway.sim else "ib")
        elif gateway.sim:
            embedded = EmbeddedSim(max_workers=workers or 4, **(latency or {})).start()
            adapter = embedded.provider()
            err_console.print(f"[dim]simulated IB Gateway on 127.0.0.1:{embedded.gateway.port}"
                              f"[/dim]")
        else:
            adapter = IbDataAdapter.from_env(**gateway.farm_options(),
                                             **({"max_workers": workers} if workers else {}))
        manager = DataManager(data_dir, adapter)
        try:
            yield manager, adapter, embedded
        finally:
            manager.close()
    finally:
        if embedded is not None:
            embedded.stop()
        elif adapter is not None:
            adapter.shutdown()


class CancellableRun:
    """A coroutine of the DataManager run to its end on an event loop of its own (called by
    ``StopOnSignal.run``, on its thread). ``cancel()``, from any thread, cancels the task: the
    DataManager cancels its requests still queued or in flight, saves what had landed and
    ends; ``wait`` waits for that.

    Args:
        make: makes the coroutine (not before it is run: a run stopped before it started
            leaves no coroutine behind).
    """

    def __init__(self, make: Callable[[], Coroutine[Any, Any, T]]):
        self._make = make
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._cancelled = False
        self._ended = threading.Event()

    def __call__(self) -> Any:
        try:
            return asyncio.run(self._main())
        finally:
            self._ended.set()

    async def _main(self) -> Any:
        with self._lock:
            if self._cancelled:
                raise asyncio.CancelledError
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        return await self._make()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)

    def wait(self, timeout: float) -> bool:
        """Whether the run has ended (waiting up to ``timeout`` seconds)."""
        return self._ended.wait(timeout)


def _guarded(guard: Any, run: CancellableRun) -> Any:
    """``run`` so that a signal cancels it (``guard``: a ``StopOnSignal``, or None)."""
    if guard is None:
        return run()
    guard.on_stop(run.cancel)
    return guard.run(run)


def _wind_down(run: CancellableRun, adapter: Any) -> None:
    """After a signal: a run still saving gets ``SAVE_GRACE`` s more once the farm has dropped
    its work (``adapter.abort()``: what is queued or at IB ends now)."""
    if not run.wait(0):
        adapter.abort()
        run.wait(SAVE_GRACE)


def _gateway(host: str | None, port: int | None, sim: bool, fetches: bool = True) -> Any:
    """The gateway to fetch from; a refused connection ends the command at once.

    Raises:
        clikit.UsageError: a malformed address (exit 2).
    """
    gateway = clikit.gateway_address(host, port, sim)
    if fetches and not gateway.sim:
        reason = clikit.probe_gateway(gateway)
        if reason is not None:
            raise _say(clikit.unreachable(gateway, reason), 1)
    return gateway


def _say(message: str, code: int) -> typer.Exit:
    """Print ``error: message`` (one line, however wide) on stderr; the exit to raise."""
    err_console.print("error: " + message, highlight=False, soft_wrap=True, markup=False)
    return typer.Exit(code)


def _when(value: Any) -> str:
    if value is None:
        return "-"
    stamp = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return stamp.strftime("%Y-%m-%d %H:%M")


def _connection_reason(exc: BaseException) -> str:
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return clikit.connection_gist(str(getattr(cause, "message", None) or cause))


def _fail(exc: BaseException, gateway: Any = None) -> typer.Exit:
    """Print ``exc`` in one line and pick the exit code (2: bad input, 1: anything else)."""
    from ktrdr.data.data_manager import InvalidRangeError
    from ktrdr.data.external_data_interface import (
        DataProviderConnectionError,
        DataProviderError,
    )
    from ktrdr.data.store import DataCorruptError, InvalidSymbolError, StoreUnusableError
    from ktrdr.data.timeframes import TimeframeError

    if isinstance(exc, DataProviderConnectionError) and gateway is not None \
            and not gateway.sim:
        return _say(clikit.unreachable(gateway, _connection_reason(exc)), 1)
    bad_input = (InvalidSymbolError, TimeframeError, InvalidRangeError, clikit.UsageError,
                 dates.DateFormatError, StoreUnusableError)
    if isinstance(exc, DataProviderError | DataCorruptError):
        return _say(str(exc), 1)
    return _say(str(exc), 2 if isinstance(exc, bad_input) else 1)


def _parse_range(start: str | None, end: str | None) -> tuple[datetime | None,
                                                                datetime | None]:
    begin = dates.parse_when(start, what="--start")
    finish = dates.parse_when(end, what="--end")
    if begin is not None and finish is not None and finish <= begin:
        raise clikit.UsageError(f"end {end!r} is not after start {start!r}; give an --end "
                                f"later than the --start")
    return begin, finish


def _timeframe(timeframe: str) -> str:
    from ktrdr.data.timeframes import normalize_timeframe

    return normalize_timeframe(timeframe)


def _instrument_type(value: str | None) -> str | None:
    if value is None:
        return None
    from ktrdr.data.external_data_interface import DataProviderError
    from ktrdr.data.ib_data_adapter import normalize_instrument_type

    try:
        return normalize_instrument_type(value)
    except DataProviderError as exc:
        raise clikit.UsageError(f"--type {value!r}: use stock, forex, future or index "
                                f"({exc.message})") from None


def summary_table(reports: list, title: str = "summary") -> Table:
    """Rows, range, gaps left, requests, time and status per symbol."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("symbol", "left"), ("tf", "left"), ("rows", "right"),
                          ("first", "left"), ("last", "left"), ("gaps left", "right"),
                          ("requests", "right"), ("time s", "right"), ("status", "left")):
        table.add_column(name, justify=justify)
    for r in reports:
        status = "[green]ok[/green]" if r.ok else f"[red]{_escape(r.error)}[/red]"
        if r.ok and r.clamped_start is not None:
            status += f" [yellow](start clamped to {_when(r.clamped_start)})[/yellow]"
        table.add_row(r.symbol, r.timeframe, f"{r.rows:,}", _when(r.start), _when(r.end),
                      str(r.gaps_left), str(r.requests), f"{r.seconds:.2f}", status)
    return table


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


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


def backfill_run(manager: Any, symbols: list[str], timeframe: str, start: Any, end: Any,
                 instrument_type: str | None, progress: ProgressView) -> CancellableRun:
    """``manager.backfill_async`` as a ``CancellableRun``."""
    return CancellableRun(lambda: manager.backfill_async(
        symbols, timeframe, start, end, progress=progress, instrument_type=instrument_type))


def run_backfill(manager: Any, symbols: list[str], timeframe: str, start: Any, end: Any,
                 instrument_type: str | None = None, guard: Any = None,
                 view: ProgressView | None = None) -> list:
    """``manager.backfill_async`` to its end with progress per symbol (``guard``: a
    ``StopOnSignal`` whose signal cancels it)."""
    view = view if view is not None else ProgressView(err_console, timeframe)
    with view:
        return _guarded(guard, backfill_run(manager, symbols, timeframe, start, end,
                                            instrument_type, view))


# --------------------------------------------------------------------------- commands


@data_app.command("load")
def load(symbol: Symbol, timeframe: Timeframe,
         start: Annotated[str | None, typer.Option(
             "--start", help=START_HELP,
             show_default=f"tail: {TAIL_START}; backfill, full: {BACKFILL_START}")] = None,
         end: End = None,
         mode: Annotated[str, typer.Option(
             "--mode", help="local (store only), tail (up to now), backfill (older bars) or "
                            "full (every gap).")] = "tail",
         instrument_type: InstrumentType = None,
         data_dir: DataDir = None,
         host: Host = None, port: Port = None, sim: Sim = False,
         rows: Annotated[int, typer.Option("--rows", help="Last rows to print.")] = 5) -> None:
    """Load one symbol, fetching what MODE asks for, and print its last bars."""
    began = time.monotonic()
    try:
        normalize_symbol(symbol)
        start_at, end_at = _parse_range(start, end)
        tf = _timeframe(timeframe)
        kind = _instrument_type(instrument_type)
        if mode not in MODES:
            raise clikit.UsageError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
        fetches = mode != "local"
        gateway = _gateway(host, port, sim, fetches)
    except ValueError as exc:  # dates, timeframe, mode, type, address: nothing was done
        raise _say(str(exc), 2) from None
    try:
        with clikit.StopOnSignal() as guard, \
                _manager(data_dir, gateway, fetch=fetches) as (manager, adapter, _):
            before = _stored_rows(manager, symbol, tf)
            view = ProgressView(err_console, tf)
            run = CancellableRun(lambda: manager.load_data_async(
                symbol, tf, start_at, end_at, mode=mode, instrument_type=kind, progress=view))
            try:
                with view:
                    frame = _guarded(guard, run)
            except clikit.Interrupted as stop:
                _wind_down(run, adapter)
                saved = view.saved() or _saved_since(manager, symbol, tf, before)
                err_console.print(saved_line(saved, stop.name, str(manager.data_dir)),
                                  markup=False, highlight=False, soft_wrap=True)
                raise
            summary = manager.get_data_summary(symbol, tf)
    except clikit.Interrupted as stop:
        clikit.exit_now(stop.exit_code)
    except Exception as exc:
        raise _fail(exc, gateway) from None
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


def _stored_rows(manager: Any, symbol: str, timeframe: str) -> int:
    try:
        return int(manager.get_data_summary(symbol, timeframe)["rows"])
    except Exception:  # unreadable or invalid: the load itself reports it
        return 0


def _saved_since(manager: Any, symbol: str, timeframe: str, before: int) -> dict[str, int]:
    added = _stored_rows(manager, symbol, timeframe) - before
    return {symbol.upper(): added} if added > 0 else {}


@data_app.command("backfill")
def backfill(
    symbols: Annotated[list[str], typer.Argument(
        help="Symbols: AAPL, EUR.USD (forex), SYMBOL@EXCHANGE (VOD@LSE).", show_default=False)],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t",
                                           help=f"Timeframe: {TIMEFRAME_LIST}.")] = "1h",
    start: Annotated[str | None, typer.Option("--start", help=START_HELP,
                                              show_default=BACKFILL_START)] = None,
    end: End = None,
    instrument_type: InstrumentType = None,
    data_dir: DataDir = None,
    host: Host = None, port: Port = None, sim: Sim = False,
    latency: Annotated[str, typer.Option(
        "--sim-latency", metavar="S|ib|ib/F",
        help="With --sim: the simulated gateway's answer time: seconds, 'ib' (the model of "
             "IB's answer times, which grow with the bars asked) or 'ib/F' (it divided by F)."
    )] = "0",
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="Farm worker processes.",
        show_default="IBFARM_MAX_WORKERS or 2; 4 with --sim")] = None,
    show_farm: Annotated[bool, typer.Option(
        "--farm-status", help="Print the farm's status at the end.")] = False,
) -> None:
    """Backfill many symbols in parallel; a re-run fetches only what is still missing."""
    began = time.monotonic()
    try:
        start_at, end_at = _parse_range(start, end)
        tf = _timeframe(timeframe)
        kind = _instrument_type(instrument_type)
        gateway = _gateway(host, port, sim)
        answers = parse_sim_latency(latency)
    except ValueError as exc:  # dates, timeframe, type, address, latency: nothing was done
        raise _say(str(exc), 2) from None
    try:
        with clikit.StopOnSignal() as guard, \
                _manager(data_dir, gateway, answers, workers) as (manager, adapter, _):
            view = ProgressView(err_console, tf)
            run = backfill_run(manager, symbols, tf, start_at, end_at, kind, view)
            try:
                with view:
                    reports = _guarded(guard, run)
            except clikit.Interrupted as stop:
                _wind_down(run, adapter)
                err_console.print(saved_line(view.saved(), stop.name, str(manager.data_dir)),
                                  markup=False, highlight=False, soft_wrap=True)
                raise
            status = adapter.farm_status()
    except clikit.Interrupted as stop:
        clikit.exit_now(stop.exit_code)
    except Exception as exc:
        raise _fail(exc, gateway) from None
    console.print(summary_table(reports, f"backfill {tf}"))
    if show_farm and status:
        console.print(farm_table(status))
    failed = [r for r in reports if not r.ok]
    _explain_connection(failed, gateway)
    console.print(f"{len(reports) - len(failed)} of {len(reports)} symbols ok, "
                  f"{sum(r.rows for r in reports):,} rows, "
                  f"{sum(r.requests for r in reports)} requests, "
                  f"{time.monotonic() - began:.1f} s", highlight=False)
    if failed:
        raise typer.Exit(1)


def _explain_connection(failed: list, gateway: Any) -> None:
    """One line for symbols that failed because the gateway could not be reached."""
    from ktrdr.data.external_data_interface import DataProviderConnectionError

    lost = [r for r in failed if isinstance(r.exception, DataProviderConnectionError)]
    if lost and not gateway.sim:
        err_console.print("error: " + clikit.unreachable(gateway, _connection_reason(
            lost[0].exception)), markup=False, highlight=False, soft_wrap=True)


@data_app.command("show")
def show(symbol: Symbol, timeframe: Timeframe,
         rows: Annotated[int, typer.Option("--rows", help="Last rows to print.")] = 10,
         data_dir: DataDir = None,
         sim: Annotated[bool, typer.Option("--sim", help="Show the simulator's dataset.")]
         = False) -> None:
    """Show what is stored for a symbol (no gateway needed)."""
    try:
        stored = clikit.Gateway("", 0, sim=clikit.sim_requested(sim))  # which dataset only
        with _manager(data_dir, stored, fetch=False) as (manager, _, _):
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
def gaps(symbol: Symbol, timeframe: Timeframe,
         start: Annotated[str | None, typer.Option(
             "--start", help=START_HELP, show_default="the first stored bar")] = None,
         end: End = None,
         instrument_type: InstrumentType = None,
         data_dir: DataDir = None,
         host: Host = None, port: Port = None, sim: Sim = False) -> None:
    """List the missing ranges (trading sessions with no stored bars)."""
    try:
        normalize_symbol(symbol)
        start_at, end_at = _parse_range(start, end)
        tf = _timeframe(timeframe)
        kind = _instrument_type(instrument_type)
        gateway = _gateway(host, port, sim)
    except ValueError as exc:
        raise _say(str(exc), 2) from None
    try:
        with _manager(data_dir, gateway) as (manager, _, _):
            found = manager.find_gaps(symbol, tf, start_at, end_at, kind)
    except Exception as exc:
        raise _fail(exc, gateway) from None
    table = Table(title=f"gaps {symbol.upper()} {tf}", title_justify="left")
    table.add_column("from")
    table.add_column("to")
    table.add_column("days", justify="right")
    for a, b in found:
        table.add_row(_when(a), _when(b), f"{(b - a).total_seconds() / 86400:.1f}")
    console.print(table)
    console.print(f"{len(found)} missing range(s)")


@data_app.command("migrate")
def migrate(data_dir: DataDir = None) -> None:
    """Convert a flat-layout store (SYMBOL_tf.parquet files) into the partitioned datasets.

    Done automatically on first use; this runs it now and says what it did.
    """
    from ktrdr.data.migrate import migrate_flat_layout
    from ktrdr.data.store import BarStore

    try:
        store = BarStore(data_dir, migrate=False)
        store.check_usable()
        report = migrate_flat_layout(store.location)
    except Exception as exc:
        raise _fail(exc) from None
    if not report.found:
        console.print(f"nothing to convert in {report.data_dir}: no flat-layout files",
                      highlight=False)
        return
    table = Table(title=f"converted {report.data_dir}", title_justify="left")
    for name, justify in (("file", "left"), ("source", "left"), ("rows", "right"),
                          ("ranges", "right"), ("now in / status", "left")):
        table.add_column(name, justify=justify)
    for item in report.converted:
        table.add_row(item.name, item.source or "-", f"{item.rows:,}", str(item.ranges),
                      str(item.target))
    for item in report.failed:
        table.add_row(item.name, item.source or "-", "-", "-", f"[red]{item.error}[/red]")
    console.print(table)
    if report.cache:
        console.print(f"symbol cache -> {report.cache}", highlight=False)
    if report.backup:
        console.print(f"{len(report.converted)} file(s) converted; the originals are in "
                      f"{report.backup} (delete them once satisfied)", highlight=False)
    if report.failed:
        raise typer.Exit(1)


@data_app.command("query")
def query(sql: Annotated[str, typer.Argument(help="SQL over the view `bars`.",
                                              show_default=False)],
          data_dir: DataDir = None,
          sim: Annotated[bool, typer.Option("--sim", help="Query the simulator's dataset.")]
          = False,
          fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")]
          = "table") -> None:
    """Run SQL (DuckDB) over the stored bars.

    The view `bars` has timestamp (UTC), open, high, low, close, volume, wap, bar_count,
    timeframe and symbol, e.g. "SELECT symbol, count(*) FROM bars GROUP BY symbol".
    """
    from ktrdr.data.query import QueryError, run_query
    from ktrdr.data.store import IB_SOURCE, SIM_SOURCE, BarStore

    if fmt not in ("table", "csv", "json"):
        raise _say(f"unknown format {fmt!r}; use table, csv or json", 2)
    try:
        _check_store(data_dir, sim, writable=False)
        store = BarStore(data_dir, SIM_SOURCE if clikit.sim_requested(sim) else IB_SOURCE)
        result = run_query(store, sql)
    except QueryError as exc:
        raise _say(str(exc), 2) from None
    except Exception as exc:
        raise _fail(exc) from None
    frame = result.to_pandas()
    if fmt == "csv":
        typer.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        typer.echo(frame.to_json(orient="records", date_format="iso"))
    else:
        console.print(frame.to_string(index=False), highlight=False)
        console.print(f"({len(frame):,} row(s))", highlight=False)


@app.command("api")
def api(host: Annotated[str, typer.Option(
            "--host", help="Address to listen on; other than loopback needs KTRDR_API_TOKEN "
                           "or --insecure.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                          help="TCP port to listen on.")] = 8000,
        sim: Sim = False,
        insecure: Annotated[bool, typer.Option(
            "--insecure", help="Serve a non-loopback address without a token.")] = False,
        log_level: Annotated[str, typer.Option(
            "--log-level", help="debug, info, warning or error.")] = "info") -> None:
    """Serve the HTTP API; the gateway is IB_HOST:IB_PORT (or --sim). With KTRDR_API_TOKEN
    set, /api/v1 and /metrics need 'Authorization: Bearer <token>'."""
    from ktrdr.api.serve import check_bind, serve
    from ktrdr.api.settings import ApiSettings

    try:
        clikit.gateway_address(None, None, sim)  # IB_HOST/IB_PORT, read by the farm later
        settings = ApiSettings.from_env(host=host, port=port, sim=sim or None)
        check_bind(host, settings.token, insecure)
    except ValueError as exc:  # an open address without a token, a malformed setting
        raise _say(str(exc), 2) from None
    serve(host=host, port=port, sim=sim, log_level=log_level, insecure=insecure,
          settings=settings)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
