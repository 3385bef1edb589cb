"""The async core: cancelling a backfill cancels its requests and keeps what arrived; a re-run
completes it; a backfill across IB's maintenance window completes (real gateway, real farm,
real files)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pandas as pd
import pytest

from ibfarm import IbFarm
from ktrdr.data.data_manager import DataManager
from ktrdr.data.ib_data_adapter import IbDataAdapter
from ktrdr.data.store import BarStore

from ..conftest import gateways, wait_until
from .conftest import NOW, assert_stored_bars_are_the_models, kind_of, model_bars
from .test_data_manager import assert_matches_model

UTC = timezone.utc
SYMBOLS = ["AAPL", "MSFT", "EUR.USD", "SPY"]
START, END = datetime(2022, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)


def run(coro):
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def cancel_after(manager: DataManager, landed: int, symbols=SYMBOLS, **kw):
    """Start a backfill, cancel it once ``landed`` requests have landed; returns the events."""
    events = []
    enough = asyncio.Event()

    def progress(event):
        events.append(event)
        if sum(1 for e in events if e.requests_done) >= landed:
            enough.set()

    task = asyncio.ensure_future(manager.backfill_async(symbols, "1h", START, END,
                                                        progress=progress, **kw))
    await asyncio.wait_for(enough.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    return events


def assert_consistent(store: BarStore, gw) -> int:
    """``assert_stored_bars_are_the_models`` for every symbol stored; the bars stored."""
    return sum(assert_stored_bars_are_the_models(store, gw, symbol, timeframe, "1 hour")
               for symbol, timeframe in store.list())


def test_a_cancelled_backfill_keeps_what_arrived_and_a_rerun_completes(tmp_path):
    with gateways() as make:
        gw = make(pacing="off", latency=0.05, hmds_concurrency=2)
        farm = IbFarm(port=gw.port, max_workers=2, pacing="off", request_timeout=30)
        try:
            adapter = IbDataAdapter(farm=farm, source="sim")
            manager = DataManager(tmp_path / "cut", adapter)
            events = run(cancel_after(manager, 8))
            total = sum(e.requests_total for e in events if e.requests_done == 0)
            landed = sum(1 for e in events if e.requests_done)
            assert 8 <= landed < total
            store = BarStore(tmp_path / "cut", source="sim")
            kept = assert_consistent(store, gw)
            assert kept > 0
            # the re-run asks only what is missing and ends where an uninterrupted run ends
            reports = manager.backfill(SYMBOLS, "1h", START, END)
            assert all(r.ok and r.gaps_left == 0 for r in reports), reports
            assert 0 < sum(r.requests for r in reports) < total
            whole = DataManager(tmp_path / "whole", adapter).backfill(SYMBOLS, "1h", START, END)
            assert all(r.ok for r in whole)
            for symbol in SYMBOLS:
                cut = store.read(symbol, "1h").frame
                pd.testing.assert_frame_equal(cut, BarStore(tmp_path / "whole", source="sim").read(
                    symbol, "1h").frame, check_freq=False)
                assert_matches_model(cut, model_bars(gw, symbol, kind_of(symbol), "1 hour",
                                                     START, END))
        finally:
            farm.shutdown(wait=True, cancel_futures=True)


def test_cancelling_leaves_nothing_in_the_farm(tmp_path):
    with gateways() as make:
        # slow answers, one at a time: most requests are still queued when the task is
        # cancelled
        gw = make(pacing="off", latency=0.5, hmds_concurrency=1)
        farm = IbFarm(port=gw.port, max_workers=2, pacing="off", request_timeout=60)
        try:
            manager = DataManager(tmp_path, IbDataAdapter(farm=farm, source="sim"))
            events = run(cancel_after(manager, 1))
            total = sum(e.requests_total for e in events if e.requests_done == 0)

            def idle():
                farm_totals = farm.status()["farm"]
                return farm_totals["pending"] == 0 and farm_totals["in_flight"] == 0

            wait_until(idle, timeout=5, what="the farm to drop the cancelled requests")
            # what had reached the gateway was cancelled there, the rest never sent
            asked = gw.stats()["requests"]
            assert asked.get("historical", 0) - asked.get("cancel_historical", 0) < total
            assert_consistent(BarStore(tmp_path), gw)
        finally:
            farm.shutdown(wait=True, cancel_futures=True)


def test_a_backfill_across_a_maintenance_window_completes(tmp_path):
    with gateways() as make:
        gw = make(pacing="off")
        farm = IbFarm(port=gw.port, max_workers=2, pacing="off", request_timeout=30)
        try:
            manager = DataManager(tmp_path, IbDataAdapter(farm=farm, source="sim"))
            wait_until(lambda: run(manager.now_async()) == NOW, what="the farm to connect")
            # IB's nightly reset: 1100, spurious 200s for valid symbols, then 1102
            gw.maintenance(3.0, refusals=True)
            reports = manager.backfill(SYMBOLS, "1h", START, END)
            assert all(r.ok and r.gaps_left == 0 for r in reports), [r.error for r in reports]
            for symbol in SYMBOLS:
                assert_matches_model(BarStore(tmp_path, source="sim").read(symbol, "1h").frame,
                                     model_bars(gw, symbol, kind_of(symbol), "1 hour", START,
                                                END))
            # nothing was remembered as unknown
            assert all(manager.cache.contract(s) is not None for s in SYMBOLS)
        finally:
            farm.shutdown(wait=True, cancel_futures=True)


def test_a_refusal_during_maintenance_is_not_remembered(tmp_path):
    with gateways() as make:
        gw = make(pacing="off")
        farm = IbFarm(port=gw.port, max_workers=1, pacing="off", request_timeout=30)
        try:
            manager = DataManager(tmp_path, IbDataAdapter(farm=farm, source="sim"))
            wait_until(lambda: run(manager.now_async()) == NOW, what="the farm to connect")
            gw.maintenance(2.0, refusals=True)  # valid symbols answered with 200
            [during] = manager.backfill(["IBM"], "1d", START, END)
            if not during.ok:  # refused (or held until the window ended, then fine)
                assert manager.cache.contract("IBM") is None
            wait_until(lambda: not gw.stats().get("maintenance"), timeout=15,
                       what="the maintenance window to end")
            [after] = manager.backfill(["IBM"], "1d", START, END)
            assert after.ok and after.gaps_left == 0, after.error
            assert manager.cache.contract("IBM").instrument_type == "stock"
            assert_matches_model(BarStore(tmp_path, source="sim").read("IBM", "1d").frame,
                                 model_bars(gw, "IBM", "STK", "1 day", START, END))
        finally:
            farm.shutdown(wait=True, cancel_futures=True)
