"""``ibfarm`` on the command line: run the simulated gateway, fetch bars through the farm."""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import typer

from ibfarm.pacing import PacingPolicy

app = typer.Typer(help="A connection farm for Interactive Brokers historical data.",
                  no_args_is_help=True, add_completion=False)
log = logging.getLogger(__name__)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def gateway(
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback by default)."),
    port: int = typer.Option(4002, help="TCP port (0 picks a free one)."),
    seed: int = typer.Option(0, help="Seed of the market model."),
    pacing: str = typer.Option("ib", help="Pacing rules to enforce: ib, conservative or off."),
    pacing_scale: float = typer.Option(1.0, help="Divide every pacing window by this factor."),
    latency: float = typer.Option(0.0, help="Seconds before each historical answer."),
    latency_per_bar: float = typer.Option(0.0, help="Extra seconds per bar in an answer."),
    stall_symbol: list[str] = typer.Option(  # noqa: B008 (typer reads defaults once)
        [], help="Never answer bars for this symbol."),
    no_permission_symbol: list[str] = typer.Option(  # noqa: B008
        [], help="Answer bars for this symbol with 162 'No market data permissions'."),
    drop_after: int | None = typer.Option(None, help="Drop a connection after N bar requests."),
    drop_rate: float = typer.Option(0.0, help="Probability a bar request drops its connection."),
    fault_seed: int = typer.Option(0, help="Seed of the random faults."),
    now: str | None = typer.Option(None, help="Fixed clock, ISO 8601 (e.g. 2024-06-03T20:00Z)."),
    hmds_outage_after: float | None = typer.Option(None, help="Start a historical-farm "
                                                      "outage after this many seconds."),
    hmds_outage_for: float = typer.Option(5.0, help="Length of that outage in seconds."),
    stats_port: int | None = typer.Option(None, help="Serve GET /stats as JSON on this port."),
) -> None:
    """Run the simulated IB Gateway until interrupted."""
    from ibfarm.sim import SimGateway

    policy = PacingPolicy.preset(pacing)
    if pacing_scale != 1.0:
        policy = policy.scaled(pacing_scale)
    clock = None
    if now:
        fixed = datetime.fromisoformat(now.replace("Z", "+00:00"))
        fixed = fixed if fixed.tzinfo else fixed.replace(tzinfo=timezone.utc)

        def clock() -> datetime:
            return fixed
    gw = SimGateway(port, host, seed=seed, pacing=policy, latency=latency,
                    latency_per_bar=latency_per_bar, stall_symbols=stall_symbol,
                    no_permission_symbols=no_permission_symbol,
                    drop_after=drop_after, drop_rate=drop_rate, fault_seed=fault_seed, now=clock)
    gw.start()
    typer.echo(f"simulated IB Gateway on {host}:{gw.port} (pacing: {pacing}, x{pacing_scale})")
    if stats_port is not None:
        server = _serve_stats(gw, host, stats_port)
        typer.echo(f"stats on http://{host}:{server.server_address[1]}/stats")
    if hmds_outage_after is not None:
        threading.Timer(hmds_outage_after, gw.hmds_outage, (hmds_outage_for,)).start()
    signal.signal(signal.SIGTERM, lambda *_: gw.stop())
    try:
        gw.serve_forever()
    except KeyboardInterrupt:
        gw.stop()


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
