"""``ibfarm`` on the command line: run the simulated gateway, fetch bars through the farm.

``ibfarm gateway`` serves the simulated IB Gateway (``--host/--port``: where it listens);
``ibfarm fetch`` fetches one request's bars through a farm (``--host/--port``: the gateway it
connects to, ``--sim`` an embedded simulated one). The grammar (dates, options, exit codes,
Ctrl-C) is ``ibfarm.clikit``'s, shared with ``ktrdr``: 0 done, 1 the fetch failed, 2 bad input,
130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import typer

from ibfarm import clikit, dates

app = typer.Typer(cls=clikit.CommandLine,
                  help="A connection farm for Interactive Brokers historical data.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger(__name__)

#: Security types ``fetch`` knows how to make a contract for.
SEC_TYPES = ("STK", "CASH", "FUT", "IND")


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help=clikit.VERBOSE_HELP),
    version: bool = clikit.version_option("ibfarm"),
) -> None:
    clikit.setup_logging(verbose)


def gateway(*, stats_port: int | None = None, **flags) -> None:
    """Run the simulated IB Gateway until interrupted.

    Every ``ibfarm.sim.SimSettings`` field is a flag (``--latency ib --latency-scale 10``,
    ``--maintenance-after 60 --maintenance-for 30``, ``--poison-symbol XYZ``, ...).
    """
    from ibfarm.sim import SimGateway
    from ibfarm.sim.settings import from_cli

    try:
        settings = from_cli(flags)
        gw = SimGateway(settings.port, settings.host, settings=settings)
    except (ValueError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        gw.start()
    except OSError as exc:
        typer.echo(f"error: cannot listen on {settings.host}:{settings.port}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"simulated IB Gateway on {settings.host}:{gw.port} (pacing: {settings.pacing}, "
               f"x{settings.pacing_scale}; latency: {settings.latency})")
    if stats_port is not None:
        server = _serve_stats(gw, settings.host, stats_port)
        typer.echo(f"stats on http://{settings.host}:{server.server_address[1]}/stats")
    signal.signal(signal.SIGTERM, lambda *_: gw.stop())
    try:
        gw.serve_forever()
    except KeyboardInterrupt:
        gw.stop()


def _gateway_signature() -> inspect.Signature:
    """The gateway command's flags: one per simulator setting, plus ``--stats-port``."""
    from ibfarm.sim.settings import cli_parameters

    stats = inspect.Parameter("stats_port", inspect.Parameter.KEYWORD_ONLY,
                              annotation=Optional[int],  # noqa: UP045 (typer reads it)
                              default=typer.Option(None, help="Serve GET /stats as JSON on "
                                                              "this port."))
    return inspect.Signature([*cli_parameters(), stats])


gateway.__signature__ = _gateway_signature()
app.command()(gateway)


@app.command()
def fetch(
    symbol: str = typer.Argument(..., help="IB symbol, e.g. AAPL, or EUR.USD for forex."),
    bar_size: str = typer.Option("1 min", "--bar-size",
                                 help="Bar size, IB's spelling or short: '1 min', '5m', '1h'."),
    duration: str = typer.Option("1 D", help="How far back from --end: '<n> S|D|W|M|Y'."),
    end: str | None = typer.Option(None, help=f"End of the range: {dates.HELP}.",
                                   show_default="now"),
    what_to_show: str | None = typer.Option(
        None, "--what-to-show", help="TRADES, MIDPOINT, BID, ASK or BID_ASK.",
        show_default="TRADES; MIDPOINT for forex"),
    rth: bool = typer.Option(True, "--rth/--all-hours", help="Regular trading hours only."),
    sec_type: str = typer.Option("STK", "--sec-type",
                                 help="STK, CASH, FUT or IND (a BASE.QUOTE symbol is CASH)."),
    exchange: str = typer.Option("SMART", help="IB exchange (SMART: the usual one)."),
    currency: str = typer.Option("USD", help="Contract currency."),
    out: str | None = typer.Option(None, "--out", help="Write the bars to this Parquet file.",
                                   show_default="print them"),
    host: str | None = typer.Option(None, help=clikit.HOST_HELP,
                                    show_default=clikit.HOST_DEFAULT),
    port: int | None = typer.Option(None, help=clikit.PORT_HELP,
                                    show_default=clikit.PORT_DEFAULT),
    sim: bool = typer.Option(False, "--sim", help=clikit.SIM_HELP),
    timeout: float = typer.Option(60.0, min=0.1, help="Seconds to wait for the bars."),
) -> None:
    """Fetch historical bars through the farm; print them or write Parquet."""
    try:
        request, notes = _request(symbol, bar_size, duration, end, what_to_show, rth,
                                  sec_type, exchange, currency)
        gateway = clikit.gateway_address(host, port, sim)
        target = _out_path(out)
    except ValueError as exc:  # UsageError, DateFormatError, IB's bar-size/duration rules
        raise clikit.fail(str(exc), clikit.EXIT_USAGE) from None
    for note in notes:
        typer.echo(note, err=True)
    if not gateway.sim:
        reason = clikit.probe_gateway(gateway)
        if reason is not None:
            raise clikit.fail(clikit.unreachable(gateway, reason))
    table = _fetch(request, gateway, timeout)
    _show(table, request, target)


def _request(symbol: str, bar_size: str, duration: str, end: str | None,
             what_to_show: str | None, rth: bool, sec_type: str, exchange: str,
             currency: str):
    """The ``BarRequest`` and the notes to print about it.

    Raises:
        ValueError: an input IB would refuse (the message says which and why).
    """
    from ibfarm.bars import (
        STEP_LIMIT,
        WHAT_TO_SHOW,
        BarRequest,
        duration_problem,
        normalize_bar_size,
        parse_duration,
    )

    symbol = symbol.strip().upper()
    if not symbol:
        raise clikit.UsageError("SYMBOL is empty; give an IB symbol such as AAPL or EUR.USD")
    sec_type = sec_type.strip().upper()
    if sec_type not in SEC_TYPES:
        raise clikit.UsageError(f"--sec-type {sec_type!r}: use one of {', '.join(SEC_TYPES)}")
    if "." in symbol and sec_type == "STK":
        sec_type = "CASH"
    bar_size = normalize_bar_size(bar_size)
    parse_duration(duration)
    problem = duration_problem(bar_size, duration)
    if problem == "days":
        raise clikit.UsageError(f"--duration {duration!r}: IB serves at most 365 D in one "
                                f"request; give years instead, e.g. '2 Y'")
    if problem == "step":
        raise clikit.UsageError(f"--duration {duration!r} is more than IB serves in one "
                                f"request of {bar_size} bars (at most {STEP_LIMIT[bar_size]})")
    notes = []
    if what_to_show is None:
        what_to_show = "MIDPOINT" if sec_type == "CASH" else "TRADES"
        if sec_type == "CASH":
            notes.append(f"{symbol} is a forex pair: showing MIDPOINT bars (IB has no TRADES "
                         f"for forex; --what-to-show picks BID, ASK or BID_ASK)")
    what_to_show = what_to_show.strip().upper()
    if what_to_show not in WHAT_TO_SHOW:
        raise clikit.UsageError(f"--what-to-show {what_to_show!r}: use one of "
                                f"{', '.join(WHAT_TO_SHOW)}")
    stamp = dates.parse_when(end, what="--end")
    request = BarRequest(symbol, bar_size, duration.strip(), end=stamp,
                         what_to_show=what_to_show, use_rth=rth, sec_type=sec_type,
                         exchange=exchange.strip().upper(), currency=currency.strip().upper())
    return request, notes


def _out_path(out: str | None) -> Path | None:
    if out is None:
        return None
    path = Path(out).expanduser()
    if path.is_dir():
        raise clikit.UsageError(f"--out {out!r} is a directory; give a file name, e.g. "
                                f"{path / 'bars.parquet'}")
    parent = path.parent
    if not parent.is_dir():
        raise clikit.UsageError(f"--out {out!r}: directory {str(parent)!r} does not exist; "
                                f"create it first")
    if not os.access(parent, os.W_OK):
        raise clikit.UsageError(f"--out {out!r}: directory {str(parent)!r} is not writable")
    return path


def _fetch(request, gateway: clikit.Gateway, timeout: float):
    """The bars (an Arrow table); every failure ends the command with its one line."""
    import concurrent.futures
    import contextlib

    from ibfarm.config import FarmConfig
    from ibfarm.errors import ErrorKind, IbError
    from ibfarm.farm import IbFarm

    with clikit.StopOnSignal() as guard, contextlib.ExitStack() as stack:
        if gateway.sim:
            from ibfarm.sim import SimGateway

            sim = stack.enter_context(SimGateway(port=0))
            gateway = clikit.Gateway("127.0.0.1", sim.port, sim=True, source="--sim")
        # IB_HOST/IB_PORT/IB_GATEWAYS were read (and checked) by gateway_address already.
        env = {k: v for k, v in os.environ.items()
               if k not in ("IB_HOST", "IB_PORT", "IB_GATEWAYS")}
        try:
            config = FarmConfig.from_env(env, **gateway.farm_options(), max_workers=1)
        except ValueError as exc:
            raise clikit.fail(str(exc), clikit.EXIT_USAGE) from None
        farm = stack.enter_context(IbFarm(config))
        future = farm.historical_bars(request)
        guard.on_stop(future.cancel)
        guard.on_stop(lambda: farm.shutdown(wait=False, cancel_running=True))
        try:
            return guard.run(future.result, timeout)
        except clikit.Interrupted as stop:
            typer.echo(f"interrupted ({stop.name}): nothing was written; the bars had not "
                       f"arrived yet, so fetch them again", err=True)
            stack.close()  # the farm and the simulator, within the hard deadline
            clikit.exit_now(stop.exit_code)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise clikit.fail(f"no bars within {timeout:g} s (IB may be pacing requests, or "
                              f"the gateway is slow); try a larger --timeout") from None
        except IbError as exc:
            if exc.kind is ErrorKind.CONNECTION:
                reason = clikit.connection_gist(exc.message)
                raise clikit.fail(clikit.unreachable(gateway, reason)) from None
            # IB refused the request's parameters: the user's input (exit 2), with IB's hint
            code = clikit.EXIT_USAGE if exc.kind is ErrorKind.INVALID_REQUEST else 1
            raise clikit.fail(f"{exc} ({exc.kind.value}); {exc.hint}", code) from None


def _show(table, request, target: Path | None) -> None:
    label = f"{request.symbol} ({request.bar_size}, {request.duration})"
    if target is not None:
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, target)
        except OSError as exc:
            raise clikit.fail(f"cannot write {target}: {exc}") from None
        typer.echo(f"{table.num_rows} bars of {label} written to {target}")
    else:
        frame = table.to_pandas()
        typer.echo(frame.to_string(max_rows=40) if len(frame) else "no bars in that range")
        typer.echo(f"{table.num_rows} bars of {label}")
    if table.num_rows == 0:
        typer.echo(_empty_hint(request), err=True)


def _empty_hint(request) -> str:
    # (TRADES on forex is refused by IB itself, 162 "No historical market data ...")
    hint = "hint: the market may have been closed then; try a longer --duration"
    if request.use_rth:
        hint += " or --all-hours"
    return hint


def _serve_stats(gw, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") != "/stats":
                self.send_error(404, "try /stats")
                return
            body = json.dumps(gw.stats(), default=str).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="sim-stats").start()
    return server


def main() -> None:
    app()


if __name__ == "__main__":
    main()
