"""``python -m benchmarks``: the farm against the other ways of getting IB bars.

By default every scenario runs against a simulated IB Gateway that the harness starts in a
process of its own; ``--host/--port`` (with ``--i-understand-this-uses-my-account``) points it
at a real TWS / IB Gateway instead (read-only requests, scenarios that need the simulator are
skipped). Prints a table per scenario, writes JSON and a PNG chart under ``--out``.

    python -m benchmarks --quick                # under two minutes
    python -m benchmarks                        # the full run (README figures)
    python -m benchmarks --scenarios large,tiny --repeats 5
    python -m benchmarks --scenarios gateway,backfill   # the simulator alone; ktrdr backfill
    python -m benchmarks --scenarios scale,gateways     # 250 to 20,000 requests; two gateways
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchmarks import chart, harness
from benchmarks.contenders import CONTENDER_NAMES, make_contenders
from benchmarks.scenarios import (
    DEFAULT_SCENARIOS,
    SCENARIO_NAMES,
    SCENARIOS,
    SIM_NOW,
    Context,
    Sizes,
)
from benchmarks.target import RealGateway, SimGatewayProcess
from ibfarm.pacing import PacingPolicy

log = logging.getLogger("benchmarks")

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _names(text: str | None, known: list[str], what: str) -> list[str] | None:
    """The comma-separated names in ``text`` (None if empty); ValueError names the unknown."""
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names or None


def _last_friday_close() -> datetime:
    """The latest Friday 21:00 UTC at least a day ago (a real gateway has data up to it)."""
    t = datetime.now(timezone.utc) - timedelta(days=1)
    t = t.replace(hour=21, minute=0, second=0, microsecond=0)
    while t.weekday() != 4:
        t -= timedelta(days=1)
    return t


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small sizes and 2 repeats (under two minutes)")
    p.add_argument("--scenarios", help=f"comma-separated, of: {', '.join(SCENARIO_NAMES)}; "
                   "or 'all' (default: the six numbered ones, without gateway, backfill, scale "
                   "and gateways)")
    p.add_argument("--contenders", help=f"comma-separated, of: {', '.join(CONTENDER_NAMES)}")
    p.add_argument("--repeats", type=int, help="repeats per scenario (default 3; --quick 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="directory for the JSON and PNG (default benchmarks/results)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument("--host", help="a real TWS / IB Gateway instead of the simulator")
    p.add_argument("--port", type=int, help="its API port (4002 paper gateway, 7497 paper TWS)")
    p.add_argument("--i-understand-this-uses-my-account", dest="confirm", action="store_true",
                   help="required with --host/--port: the run sends many read-only historical "
                        "data requests through your IB account and counts against its pacing")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = p.parse_args(argv)
    if (args.host or args.port) and not args.confirm:
        p.error("a real gateway needs --i-understand-this-uses-my-account")
    if args.repeats is not None and args.repeats < 1:
        p.error("--repeats must be at least 1")
    try:
        args.scenario_names = (SCENARIO_NAMES if args.scenarios == "all" else
                               _names(args.scenarios, SCENARIO_NAMES, "scenarios")
                               or DEFAULT_SCENARIOS)
        args.contender_names = _names(args.contenders, CONTENDER_NAMES, "contenders")
    except ValueError as exc:
        p.error(str(exc))  # exit status 2
    return args


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: farms, pacers and the gateway process are shut down."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    _exit_on_sigterm()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scenario_names = args.scenario_names
    scenarios = [cls for name, cls in SCENARIOS.items() if name in scenario_names]
    contenders = make_contenders(args.contender_names)
    sizes = Sizes.quick() if args.quick else Sizes()
    repeats = args.repeats or (2 if args.quick else 3)
    policy = PacingPolicy()
    real = bool(args.host or args.port)
    if real:
        gateway = RealGateway(args.host or "127.0.0.1", args.port or 4002)
        now = _last_friday_close()
    else:
        gateway = SimGatewayProcess(policy, SIM_NOW)
        now = SIM_NOW
    t = time.perf_counter()
    with gateway:
        ctx = Context(gateway, now, sizes, policy, quick=args.quick)
        record = {"quick": args.quick, "repeats": repeats, "scenarios": scenario_names,
                  "contenders": [c.name for c in contenders]}
        results = harness.run_all(ctx, scenarios, contenders, repeats, record)
    path = harness.save(results, args.out)
    harness.print_results(results)
    print(f"\nresults: {path} (and {args.out / 'latest.json'}); "  # noqa: T201
          f"{time.perf_counter() - t:.0f} s in all")
    if not args.no_chart:
        png = chart.draw(results, args.out / "latest.png")
        if png:
            print(f"chart: {png}")  # noqa: T201
    failed = [name for name, sc in results["scenarios"].items() if "error" in sc]
    if failed:
        print(f"scenarios that failed: {', '.join(failed)}", file=sys.stderr)  # noqa: T201
    return results


if __name__ == "__main__":
    main()
