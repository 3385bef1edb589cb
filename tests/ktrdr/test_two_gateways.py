"""A backfill through a farm over two gateways, one of them restarted midway: every symbol
completes and stores exactly the model's bars (both gateways serve the same market model)."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from ibfarm import IbFarm
from ibfarm.pacing import PacingPolicy
from ibfarm.sim import SimGateway
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter
from ktrdr.data.store import BarStore

from ..conftest import wait_until
from .conftest import NOW, kind_of, model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc
SYMBOLS = ["AAPL", "MSFT", "SPY", "EUR.USD"]
START, END = datetime(2023, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)


def test_a_backfill_over_two_gateways_survives_one_restarting(tmp_path):
    policy = PacingPolicy(max_open_requests=6)  # each gateway's budget is small: both work
    with SimGateway(port=0, now=lambda: NOW, pacing=policy, latency=0.05) as a, \
            SimGateway(port=0, now=lambda: NOW, pacing=policy, latency=0.05) as b:
        farm = IbFarm(gateways=[f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], max_workers=1,
                      pacing=policy, request_timeout=30)
        try:
            manager = DataManager(tmp_path, IbDataAdapter(farm=farm, source="sim"))
            restart = threading.Thread(target=a.restart, kwargs={"down_for": 1.0})

            def progress(event):
                if event.requests_done == 5 and not restart.is_alive() and \
                        restart.ident is None:
                    restart.start()  # gateway a goes away while the backfill runs

            reports = manager.backfill(SYMBOLS, "1h", START, END, progress=progress)
            wait_until(lambda: restart.ident is not None, what="the restart to have run")
            restart.join()
            assert all(r.ok and r.gaps_left == 0 for r in reports), [r.error for r in reports]
            # gateway a's worker reconnects once it is back
            wait_until(lambda: a.stats()["connections_total"] >= 2, what="a's worker back")
            served = {g["gateway"]: g["served"] for g in farm.status()["gateways"]}
            assert all(n > 0 for n in served.values()), served
            store = BarStore(tmp_path, source="sim")
            for symbol in SYMBOLS:
                assert_matches_model(store.read(symbol, "1h").frame,
                                     model_bars(a, symbol, kind_of(symbol), "1 hour", START, END))
        finally:
            farm.shutdown(wait=True, cancel_futures=True)
