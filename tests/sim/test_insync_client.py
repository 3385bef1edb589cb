"""ib_insync, unmodified, against the simulated gateway over TCP."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from ibfarm.backend import IB, Contract, Forex, Future, Index, RequestError, Stock
from ibfarm.sim import SimGateway
from tests.conftest import NOW

UTC = timezone.utc


@pytest.fixture
def ib(open_gateway):
    client = IB()
    client.RaiseRequestErrors = True
    client.connect("127.0.0.1", open_gateway.port, clientId=7, timeout=10)
    yield client
    client.disconnect()


def model_bars(gw: SimGateway, contract_symbol: str, sec_type: str, bar_size: str,
               end: datetime, duration: str, what: str = "TRADES", use_rth: bool = True):
    """The bars the model holds for a request (N D counted in trading days, as IB does)."""
    inst = [i for i in gw.market.instruments
            if i.symbol == contract_symbol and i.sec_type == sec_type][0]
    start = gw.market.range_start(inst, end, duration, use_rth)
    return gw.market.bars(inst, bar_size, start, end, use_rth, what)


def test_connect_reports_account_and_time(ib, open_gateway):
    assert ib.managedAccounts() == ["DU123456"]
    assert ib.reqCurrentTime() == NOW
    assert open_gateway.stats()["connections_open"] == 1


@pytest.mark.parametrize("contract, sec_type, exchange", [
    (Stock("AAPL", "SMART", "USD"), "STK", "SMART"),
    (Forex("EURUSD"), "CASH", "IDEALPRO"),
    (Index("SPX", "CBOE", "USD"), "IND", "CBOE"),
])
def test_contract_details_by_type(ib, contract, sec_type, exchange):
    details = ib.reqContractDetails(contract)
    assert len(details) == 1
    d = details[0]
    assert d.contract.secType == sec_type and d.contract.exchange == exchange
    assert d.contract.conId > 0 and d.timeZoneId.startswith("US/")
    sessions = d.tradingSessions()
    assert sessions, "tradingHours must parse into sessions"
    assert all(s.start < s.end for s in sessions)
    assert "CLOSED" in d.tradingHours or sec_type == "CASH"  # weekends close stock/index days


def test_futures_list_quarterly_contracts(ib):
    details = ib.reqContractDetails(Future("ES", exchange="CME"))
    months = [d.contract.lastTradeDateOrContractMonth for d in details]
    assert len(details) >= 2 and months == sorted(months)
    assert all(d.contract.multiplier == "50" for d in details)


def test_unknown_symbol_is_error_200(ib):
    with pytest.raises(RequestError) as err:
        ib.reqContractDetails(Stock("NOPE", "SMART", "USD"))
    assert err.value.code == 200


@pytest.mark.parametrize("bar_size, duration, count", [
    ("1 min", "1 D", 330), ("5 mins", "2 D", 78 + 66), ("1 hour", "1 W", 1 + 7 * 4 + 6),
    ("30 secs", "3600 S", 120),
])
def test_intraday_bars_match_model_format2(ib, open_gateway, bar_size, duration, count):
    end = NOW - timedelta(hours=2)  # inside the regular session
    bars = ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), end, duration, bar_size,
                                "TRADES", True, 2)
    expected = model_bars(open_gateway, "AAPL", "STK", bar_size, end, duration)
    assert len(bars) == len(expected) == count  # "N D": trading days; "W": 7 x 24 h
    assert [int(b.date.timestamp()) for b in bars] == expected.time.tolist()
    np.testing.assert_array_equal([b.close for b in bars], expected.close)
    np.testing.assert_array_equal([b.high for b in bars], expected.high)
    np.testing.assert_array_equal([b.volume for b in bars], expected.volume)
    assert bars[0].date.tzinfo is not None


def test_format_date_1_gives_zoned_local_times(ib, open_gateway):
    fmt1 = ib.reqHistoricalData(Stock("MSFT", "SMART", "USD"), NOW, "1 D", "1 hour", "TRADES",
                                True, 1)
    fmt2 = ib.reqHistoricalData(Stock("MSFT", "SMART", "USD"), NOW, "1 D", "1 hour", "TRADES",
                                True, 2)
    assert [b.date for b in fmt1] == [b.date for b in fmt2]  # same instants, zone-aware
    assert fmt1[0].date.utcoffset() == timedelta(hours=-4)  # US/Eastern in June
    assert fmt1[0].date.hour == 9 and fmt1[0].date.minute == 30


def test_daily_bars_are_dates(ib, open_gateway):
    bars = ib.reqHistoricalData(Stock("IBM", "SMART", "USD"), NOW, "1 M", "1 day", "TRADES",
                                True, 1)
    assert bars and all(type(b.date).__name__ == "date" for b in bars)
    assert all(b.date.weekday() < 5 for b in bars)
    inst = open_gateway.market.resolve(symbol="IBM", sec_type="STK")[0]
    start = bars[0].date
    minutes = open_gateway.market.bars(
        inst, "1 min", datetime(start.year, start.month, start.day, tzinfo=UTC),
        datetime(start.year, start.month, start.day, 23, 59, tzinfo=UTC), True, "TRADES")
    assert bars[0].open == minutes.open[0] and bars[0].close == minutes.close[-1]
    assert bars[0].volume == minutes.volume.sum()


def test_forex_midpoint_and_no_trades(ib, open_gateway):
    bars = ib.reqHistoricalData(Forex("EURUSD"), NOW, "1 D", "15 mins", "MIDPOINT", False, 2)
    assert bars and all(b.volume == -1 for b in bars)
    with pytest.raises(RequestError) as err:
        ib.reqHistoricalData(Forex("EURUSD"), NOW, "1 D", "15 mins", "TRADES", False, 2)
    assert err.value.code == 162


@pytest.mark.parametrize("end", [
    "20240605 16:00:00 UTC", "20240605 12:00:00 US/Eastern", "20240605-16:00:00",
    "20240605 12:00:00",
])
def test_end_date_forms(ib, end):
    bars = ib.reqHistoricalData(Stock("SPY", "SMART", "USD"), end, "3600 S", "1 min",
                                "TRADES", True, 2)
    assert len(bars) == 60
    assert bars[-1].date == datetime(2024, 6, 5, 15, 59, tzinfo=UTC)


def test_empty_end_means_now(ib):
    bars = ib.reqHistoricalData(Stock("SPY", "SMART", "USD"), "", "1 D", "1 hour", "TRADES",
                                True, 2)
    assert bars[-1].date == datetime(2024, 6, 7, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize("bar_size, duration, end, code", [
    ("7 mins", "1 D", "", 321),
    ("1 min", "1 H", "", 321),
    ("1 min", "1 D", "yesterday noon", 10314),
    ("1 secs", "1 D", "", 162),  # longer than the bar size allows
])
def test_invalid_requests_get_ib_codes(ib, bar_size, duration, end, code):
    # Read off errorEvent: ib_async counts 321 as a warning and does not fail the request.
    errors = []
    ib.errorEvent += lambda rid, c, message, *_: errors.append((rid, c)) if rid > 0 else None
    with contextlib.suppress(RequestError):
        ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), end, duration, bar_size, "TRADES",
                             True, 2, timeout=2 if code == 321 else 60)
    assert errors and errors[0][1] == code  # (a cancel after the timeout then gets 366)


def test_no_data_before_head_and_in_closed_session(ib, open_gateway):
    with pytest.raises(RequestError) as err:  # a Sunday
        ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), "20240602 20:00:00 UTC", "3600 S",
                             "1 min", "TRADES", True, 2)
    assert err.value.code == 162 and "returned no data" in err.value.message
    head = ib.reqHeadTimeStamp(Stock("TSLA", "SMART", "USD"), "TRADES", True, 2)
    before = head - timedelta(days=3)
    with pytest.raises(RequestError) as err:
        ib.reqHistoricalData(Stock("TSLA", "SMART", "USD"), before, "2 D", "1 hour", "TRADES",
                             True, 2)
    assert err.value.code == 162


def test_head_timestamp(ib, open_gateway):
    head = ib.reqHeadTimeStamp(Stock("AAPL", "SMART", "USD"), "TRADES", True, 2)
    inst = open_gateway.market.resolve(symbol="AAPL", sec_type="STK")[0]
    assert head == open_gateway.market.head_timestamp(inst, "TRADES", True)
    assert head.year == 1980


def test_cancel_in_flight_and_unknown(open_gateway):
    open_gateway.stall_next(1)
    ib = IB()
    errors = []
    ib.errorEvent += lambda req_id, code, text, contract: errors.append((req_id, code, text))
    ib.connect("127.0.0.1", open_gateway.port, clientId=3, timeout=10)
    try:
        bars = ib.reqHistoricalData(Stock("AAPL", "SMART", "USD"), NOW, "1 D", "1 min",
                                    "TRADES", True, 2, timeout=0.5)
        assert len(bars) == 0
        ib.sleep(0.3)
        assert any(code == 162 and "query cancelled" in text for _, code, text in errors)
        ib.client.cancelHistoricalData(9999)
        ib.sleep(0.3)
        assert any(rid == 9999 and code == 366 for rid, code, _ in errors)
    finally:
        ib.disconnect()
    assert open_gateway.stats()["open_requests"] == 0


def test_duplicate_client_id_is_refused(open_gateway):
    first, second = IB(), IB()
    errors = []
    second.errorEvent += lambda req_id, code, text, contract: errors.append(code)
    first.connect("127.0.0.1", open_gateway.port, clientId=5, timeout=10)
    try:
        with pytest.raises((TimeoutError, ConnectionError, OSError)):
            second.connect("127.0.0.1", open_gateway.port, clientId=5, timeout=2)
        assert 326 in errors
        assert first.isConnected()
    finally:
        first.disconnect()
        second.disconnect()


def test_contract_by_con_id(ib):
    details = ib.reqContractDetails(Contract(conId=265598))
    assert details[0].contract.symbol == "AAPL"


def test_head_timestamp_format_1_is_zoned(ib, open_gateway):
    zoned = ib.reqHeadTimeStamp(Stock("AAPL", "SMART", "USD"), "TRADES", True, 1)
    utc = ib.reqHeadTimeStamp(Stock("AAPL", "SMART", "USD"), "TRADES", True, 2)
    assert zoned.tzinfo is not None and zoned == utc
