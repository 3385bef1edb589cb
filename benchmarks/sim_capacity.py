"""How many 1-minute bars per second the simulated gateway serves, and at what CPU cost.

The gateway runs in this process (its loop on one thread, so on one core at most); readers in
separate processes request one week of 1-minute bars each over raw sockets and only count the
bytes, so the client side never limits the figure. Reported: bars/s on the wall clock, the
gateway thread's CPU seconds, and bars per CPU second, for a cold pass (bars generated and
encoded) and warm passes (answers from the encoded cache).

    python -m benchmarks.sim_capacity [--readers 2] [--requests 40]
    python -m benchmarks --scenarios gateway        # the same passes, in the harness
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import struct
import time
from datetime import datetime, timedelta, timezone

from ibfarm.sim import SimGateway

SYMBOLS = ["AAPL", "MSFT", "SPY", "IBM", "NVDA", "TSLA", "AMZN", "GOOGL"]
NOW = datetime(2024, 6, 7, 21, 0, tzinfo=timezone.utc)


def _message(*fields: object) -> bytes:
    payload = b"".join(str(f).encode() + b"\0" for f in fields)
    return struct.pack(">I", len(payload)) + payload


def _request(req_id: int, symbol: str, end: datetime) -> bytes:
    return _message(20, req_id, 0, symbol, "STK", "", "0.0", "", "", "SMART", "", "USD", "", "",
                    0, end.strftime("%Y%m%d %H:%M:%S UTC"), "1 min", "1 W", 0, "TRADES", 2, 0, "")


def _reader(port: int, client_id: int, jobs: list[tuple[str, str]], go, out: mp.Queue) -> None:
    """Send every job, then read until each has answered; report the bar count."""
    sock = socket.create_connection(("127.0.0.1", port))
    version = b"v157..176"
    sock.sendall(b"API\0" + struct.pack(">I", len(version)) + version)
    stream = sock.makefile("rb", buffering=1 << 20)

    def message() -> bytes:
        size = struct.unpack(">I", stream.read(4))[0]
        return stream.read(size)

    message()  # handshake
    sock.sendall(_message(71, 2, client_id, ""))
    out.put("ready")
    go.wait(60)
    pending = {}
    for i, (symbol, end) in enumerate(jobs, start=1):
        pending[i] = symbol
        sock.sendall(_request(i, symbol, datetime.fromisoformat(end)))
    bars = 0
    while pending:
        body = message()
        head = body.split(b"\0", 5)
        if head[0] == b"17":
            bars += int(head[4])
            pending.pop(int(head[1]), None)
        elif head[0] == b"4" and int(head[2]) in pending:
            pending.pop(int(head[2]))
    sock.close()
    out.put(bars)


def run_pass(gw: SimGateway, readers: int, requests: int, weeks_back: int) -> dict:
    """One pass: ``readers`` processes share ``requests`` requests; returns the figures."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    jobs = [(SYMBOLS[i % len(SYMBOLS)],
             (NOW - timedelta(weeks=weeks_back + i // len(SYMBOLS))).isoformat())
            for i in range(requests)]
    procs = [ctx.Process(target=_reader, args=(gw.port, 100 + r, jobs[r::readers], go, out))
             for r in range(readers)]
    for proc in procs:
        proc.start()
    for _ in procs:  # every reader connected before the clock starts
        out.get(timeout=60)
    before = gw.stats()
    t0 = time.perf_counter()
    go.set()
    total = sum(out.get(timeout=300) for _ in procs)
    wall = time.perf_counter() - t0
    for proc in procs:
        proc.join(30)
    stats = gw.stats()
    cpu = stats["cpu_seconds"] - before["cpu_seconds"]
    sent = stats["bars_sent"] - before["bars_sent"]
    return {"bars": total, "bars_sent": sent, "wall_s": round(wall, 3),
            "gateway_cpu_s": round(cpu, 3), "bars_per_s": round(sent / wall),
            "bars_per_cpu_s": round(sent / cpu) if cpu else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--warm-passes", type=int, default=3)
    args = parser.parse_args(argv)
    results = {}
    with SimGateway(port=0, now=lambda: NOW, pacing="off") as gw:
        results["cold"] = run_pass(gw, args.readers, args.requests, weeks_back=10)
        warm = [run_pass(gw, args.readers, args.requests, weeks_back=10)
                for _ in range(args.warm_passes)]
        results["warm"] = sorted(warm, key=lambda r: r["bars_per_s"])[len(warm) // 2]
    print(json.dumps(results, indent=2))  # noqa: T201
    return results


if __name__ == "__main__":
    main()
