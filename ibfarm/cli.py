"""``ibfarm`` on the command line: run the simulated gateway, fetch bars through the farm."""

from __future__ import annotations

import inspect
import json
import logging
import signal
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import typer

app = typer.Typer(help="A connection farm for Interactive Brokers historical data.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger(__name__)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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
    bar_size: str = typer.Option("1 min", "--bar-size", help="IB bar size, e.g. '1 min'."),
    duration: str = typer.Option("1 D", help="How far back from --end, e.g. '1 D', '1 W'."),
    end: str | None = typer.Option(None, help="End, ISO 8601 (naive means UTC); default now."),
    what_to_show: str = typer.Option("TRADES", "--what-to-show", help="TRADES, MIDPOINT..."),
    rth: bool = typer.Option(True, "--rth/--all-hours", help="Regular trading hours only."),
    sec_type: str = typer.Option("STK", "--sec-type", help="STK, CASH, FUT or IND."),
    exchange: str = typer.Option("SMART", help="IB exchange."),
    currency: str = typer.Option("USD", help="Contract currency."),
    out: str | None = typer.Option(None, "--out", help="Write the bars to this Parquet file."),
    host: str | None = typer.Option(None, help="Gateway host (default IB_HOST or 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Gateway port (default IB_PORT or 4002)."),
    sim: bool = typer.Option(False, "--sim", help="Fetch from an embedded simulated gateway."),
    timeout: float = typer.Option(60.0, help="Seconds to wait for the bars."),
) -> None:
    """Fetch historical bars through the farm; print them or write Parquet."""
    import contextlib

    from ibfarm.bars import BarRequest
    from ibfarm.config import FarmConfig
    from ibfarm.errors import IbError
    from ibfarm.farm import IbFarm

    stamp = None
    if end:
        stamp = datetime.fromisoformat(end.replace("Z", "+00:00"))
    request = BarRequest(symbol, bar_size, duration, end=stamp, what_to_show=what_to_show,
                         use_rth=rth, sec_type=sec_type, exchange=exchange, currency=currency)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    with contextlib.ExitStack() as stack:
        if sim:
            from ibfarm.sim import SimGateway

            gw = stack.enter_context(SimGateway(port=0))
            overrides.update(host="127.0.0.1", port=gw.port)
        farm = stack.enter_context(IbFarm(FarmConfig.from_env(**overrides), max_workers=1))
        try:
            table = farm.historical_bars(request).result(timeout)
        except IbError as exc:
            typer.echo(f"error: {exc} ({exc.kind.value})", err=True)
            raise typer.Exit(1) from None
    if out:
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        typer.echo(f"{table.num_rows} bars of {symbol} ({bar_size}) written to {out}")
        return
    frame = table.to_pandas()
    typer.echo(frame.to_string(max_rows=40) if len(frame) else "no bars in that range")
    typer.echo(f"{table.num_rows} bars of {symbol} ({bar_size}, {duration})")


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
