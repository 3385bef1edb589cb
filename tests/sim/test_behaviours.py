"""The real gateway's behaviours (shared/reference/real-ib-behaviours.md, #1-#26), each seen
through an unmodified client library over TCP: ``ibfarm.backend`` (ib_async here) and, where
the wire form matters, the official ``ibapi``."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from ibfarm.backend import IB, Contract, Forex, Future, Index, RequestError, Stock
from ibfarm.sim import SimGateway
from tests.conftest import gateways

UTC = timezone.utc
ET = ZoneInfo("America/New_York")
CT = ZoneInfo("America/Chicago")
HK = ZoneInfo("Asia/Hong_Kong")
#: A Wednesday, 11:30:30 in New York: sessions, the week and the month are in progress.
LIVE = datetime(2024, 6, 5, 15, 30, 30, tzinfo=UTC)
#: A Sunday evening (UTC).
SUNDAY = datetime(2025, 4, 13, 20, 0, tzinfo=UTC)
AAPL = Stock("AAPL", "SMART", "USD")


@contextlib.contextmanager
def client(clock: datetime, client_id: int = 1, **knobs):
    """A gateway on ``clock`` (pacing off unless told) and an ib_async client connected to it."""
    knobs.setdefault("pacing", "off")
    with gateways() as make:
        gw = make(now=lambda: clock, **knobs)
        ib = IB()
        ib.RaiseRequestErrors = True
        errors: list[tuple[int, int, str]] = []
        ib.errorEvent += lambda rid, code, text, *_: errors.append((rid, code, text))
        ib.connect("127.0.0.1", gw.port, clientId=client_id, timeout=10)
        ib.errors = errors
        try:
            yield gw, ib
        finally:
            ib.disconnect()


def error_of(ib, call, *args, timeout: float = 10.0, **kwargs) -> tuple[int, str]:
    """(code, text) of the error a request gets, as soon as it arrives (ib_async passes some
    codes as warnings and would wait for an answer that never comes)."""
    before = len(ib.errors)
    request = asyncio.ensure_future(getattr(ib, call.__name__ + "Async")(*args, **kwargs))
    deadline = time.monotonic() + timeout

    def mine() -> list[tuple[int, str]]:
        # (a 366 may follow an earlier request that timed out: not this request's answer)
        return [(c, t) for rid, c, t in ib.errors[before:] if rid > 0 and c != 366]

    while not mine() and not request.done() and time.monotonic() < deadline:
        ib.sleep(0.005)
    if not request.done():
        request.cancel()
    with contextlib.suppress(RequestError, asyncio.CancelledError):
        ib.run(request)
    assert mine(), "the request got no error"
    return mine()[0]


def minutes(gw: SimGateway, symbol: str, start: datetime, end: datetime, what="TRADES"):
    inst = gw.market.resolve(symbol=symbol, sec_type="STK")[0]
    return gw.market.bars(inst, "1 min", start, end, True, what)


# ----------------------------------------------------------------------------------- #1 #2

def test_1_intraday_bar_in_progress_holds_minutes_up_to_now():
    with client(LIVE) as (gw, ib):
        hourly = ib.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2)
        last = hourly[-1]
        assert last.date == datetime(2024, 6, 5, 15, 0, tzinfo=UTC)   # 11:00 New York
        m1 = minutes(gw, "AAPL", datetime(2024, 6, 5, 15, 0, tzinfo=UTC), LIVE)
        assert len(m1) == 30 and m1.time[-1] == datetime(2024, 6, 5, 15, 29, tzinfo=UTC)\
            .timestamp()
        assert last.volume == m1.volume.sum() and last.close == m1.close[-1]
        one_min = ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, 2)
        assert one_min[-1].date < LIVE - timedelta(seconds=59)   # no minute after now


def test_1_todays_daily_bar_and_the_current_week_and_month_are_partial():
    with client(LIVE) as (gw, ib):
        daily = ib.reqHistoricalData(AAPL, "", "5 D", "1 day", "TRADES", True, 2)
        today = minutes(gw, "AAPL", datetime(2024, 6, 5, 13, 30, tzinfo=UTC), LIVE)
        assert daily[-1].date == date(2024, 6, 5) and len(daily) == 5
        assert daily[-1].close == today.close[-1] and daily[-1].volume == today.volume.sum()
        weekly = ib.reqHistoricalData(AAPL, "", "1 M", "1W", "TRADES", True, 2)
        assert weekly[-1].date == date(2024, 6, 5)            # the latest date so far
        assert weekly[-2].date == date(2024, 5, 31)           # a whole week: its Friday
        week = ib.reqHistoricalData(AAPL, "", "3 D", "1 day", "TRADES", True, 2)
        assert weekly[-1].volume == sum(b.volume for b in week if b.date >= date(2024, 6, 3))
        monthly = ib.reqHistoricalData(AAPL, "", "1 Y", "1 month", "TRADES", True, 2)
        assert monthly[-1].date == date(2024, 6, 5) and monthly[-2].date == date(2024, 5, 31)


def test_2_weekly_bars_carry_the_last_trading_date_thursday_before_a_friday_holiday():
    with client(datetime(2026, 6, 27, 12, tzinfo=UTC)) as (_, ib):
        weekly = ib.reqHistoricalData(AAPL, "", "1 M", "1 week", "TRADES", True, 1)
        dates = [b.date for b in weekly]
        assert date(2026, 6, 18) in dates and date(2026, 6, 19) not in dates  # Juneteenth
        assert {d.weekday() for d in dates if d != date(2026, 6, 18)} == {4}


# ----------------------------------------------------------------------------------- #3 #4 #5

def test_3_4_5_bar_dates_and_the_end_strings_carry_the_zone(ibapi_app_factory):
    app, gw = ibapi_app_factory(datetime(2025, 4, 5, 21, 56, tzinfo=UTC))
    done = app.expect(1)
    app.reqHistoricalData(1, app.stock("AAPL"), "", "1 D", "1 hour", "TRADES", 1, 1, False, [])
    assert done.wait(10)
    bars = app.rows[1]
    assert bars[0].date == "20250404 09:30:00 US/Eastern" and bars[1].date.endswith(
        "10:00:00 US/Eastern")
    start, end = app.ends[1]
    assert end == "20250405 17:56:00 US/Eastern"
    assert re.fullmatch(r"20250404 \d\d:\d\d:00 US/Eastern", start)
    done = app.expect(2)  # daily bars are dates even with formatDate=2
    app.reqHistoricalData(2, app.stock("AAPL"), "", "2 D", "1 day", "TRADES", 1, 2, False, [])
    assert done.wait(10)
    assert [b.date for b in app.rows[2]] == ["20250403", "20250404"]


def test_4_futures_daily_bars_carry_the_exchange_trading_date():
    with client(datetime(2025, 6, 10, 12, tzinfo=UTC)) as (_, ib):
        es = ib.reqContractDetails(Future("ES", exchange="CME"))[0].contract
        daily = ib.reqHistoricalData(es, "20250607 00:00:00 UTC", "5 D", "1 day", "TRADES",
                                     False, 2)
        # Monday's session opens Sunday 17:00 Chicago; it is Monday's bar.
        assert [b.date for b in daily] == [date(2025, 6, d) for d in (2, 3, 4, 5, 6)]


# ----------------------------------------------------------------------------------- #6 #7 #8

def test_6_n_d_means_trading_days_w_m_y_calendar_spans():
    with client(SUNDAY) as (_, ib):
        daily = ib.reqHistoricalData(AAPL, "", "8 D", "1 day", "TRADES", True, 1)
        assert [b.date for b in daily] == [date(2025, 4, d) for d in (2, 3, 4, 7, 8, 9, 10, 11)]
        assert len(ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, 2)) == 390
        assert len(ib.reqHistoricalData(AAPL, "", "5 D", "1 min", "TRADES", True, 2)) == 1950
        week = ib.reqHistoricalData(AAPL, "", "1 W", "1 day", "TRADES", True, 1)
        assert [b.date.day for b in week] == [7, 8, 9, 10, 11]       # 7 x 24 h back


def test_7_duration_rules():
    with client(SUNDAY) as (_, ib):
        three_months = ib.reqHistoricalData(AAPL, "", "3 M", "1 min", "TRADES", True, 2)
        assert len(three_months) > 60 * 390                    # no step table for 1 min
        assert len(ib.reqHistoricalData(AAPL, "", "2 Y", "1 hour", "TRADES", True, 2)) > 3000
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, "", "366 D", "1 day", "TRADES",
                              True, 2)
        assert code == 321 and text == (
            "Error validating request.-'bH' : cause - Historical data requests for durations "
            "longer than 365 days must be made in years.")
        assert len(ib.reqHistoricalData(AAPL, "", "365 D", "1 day", "TRADES", True, 2)) > 240
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, "", "2000 S", "1 secs", "TRADES",
                              True, 2)
        assert (code, text) == (162, "Historical Market Data Service error message:Time "
                                     "length exceed max.")


@pytest.mark.parametrize("spelling", ["1 sec", "1 mins", "1h", "1 hours", "1 days", "1 weeks"])
def test_8_only_ibs_own_bar_size_spellings(spelling):
    with client(SUNDAY) as (_, ib):
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, "", "1 D", spelling, "TRADES",
                              True, 2)
        assert code == 321
        assert text.endswith("Historical data bar size setting is invalid. Legal ones are: "
                             "1 secs, 5 secs, 10 secs, 15 secs, 30 secs, 1 min, 2 mins, 3 mins, "
                             "5 mins, 10 mins, 15 mins, 20 mins, 30 mins, 1 hour, 2 hours, "
                             "3 hours, 4 hours, 8 hours, 1 day, 1W, 1M")


def test_8_every_legal_spelling_is_served():
    with client(LIVE) as (_, ib):
        for size, duration in (("1 secs", "60 S"), ("30 secs", "1800 S"), ("2 mins", "1 D"),
                               ("8 hours", "1 W"), ("1W", "1 M"), ("1M", "1 Y")):
            assert ib.reqHistoricalData(AAPL, "", duration, size, "TRADES", True, 2), size


# ----------------------------------------------------------------------------------- #9

def test_9_unavailable_history_gets_the_no_data_answer():
    with client(datetime(2026, 12, 1, 18, tzinfo=UTC)) as (_, ib):
        old = "20260301 15:00:00 UTC"                          # 9 months back
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, old, "1800 S", "1 secs",
                              "TRADES", True, 2)
        assert code == 162 and "HMDS query returned no data: AAPL@SMART Trades" in text
        assert ib.reqHistoricalData(AAPL, old, "1 D", "1 min", "TRADES", True, 2)  # minutes: yes
        recent = ib.reqHistoricalData(AAPL, "20261130 15:00:00 UTC", "60 S", "1 secs",
                                      "TRADES", True, 2)
        assert len(recent) == 60
        # A future expired more than two years ago: found with includeExpired, no data.
        old_es = Future("ES", "202312", exchange="CME", includeExpired=True)
        (details,) = ib.reqContractDetails(old_es)
        details.contract.includeExpired = True   # IB asks it of requests for expired futures
        code, text = error_of(ib, ib.reqHistoricalData, details.contract,
                              "20231201 00:00:00 UTC", "5 D", "1 hour", "TRADES", False, 2)
        assert code == 162 and "returned no data" in text
        # A delisted stock: its contract is found, its history is gone.
        (twtr,) = ib.reqContractDetails(Stock("TWTR", "SMART", "USD"))
        code, text = error_of(ib, ib.reqHistoricalData, twtr.contract, "20220601 20:00:00 UTC",
                              "5 D", "1 day", "TRADES", True, 2)
        assert code == 162 and "returned no data" in text


# ----------------------------------------------------------------------------------- #10 #11 #12

def test_10_latency_model_follows_the_published_figures():
    from ibfarm.sim.latency import IB as model
    from ibfarm.sim.latency import answer_delay

    assert model.seconds(390) == pytest.approx(0.6, rel=0.01)
    assert model.seconds(1950) == pytest.approx(8.3, rel=0.01)
    assert model.seconds(2340) > 60 and model.seconds(3900) > 60
    rates = [n / model.seconds(n) for n in (390, 1950, 2340)]
    assert rates == sorted(rates, reverse=True)            # grows faster than the bar count
    assert 55 <= min(n / model.seconds(n) for n in (50, 390, 1950)) and \
        max(n / model.seconds(n, intraday=False) for n in (250, 2500)) <= 3350
    assert answer_delay("ib", 100.0, 0.0, 1.0, 390, True, False) == pytest.approx(0.006, rel=0.01)
    assert answer_delay(0.2, 1.0, 0.001, 1.0, 100, True, False) == pytest.approx(0.3)
    assert answer_delay(0.2, 1.0, 0.0, 30.0, 100, True, True) == pytest.approx(6.0)  # #11


def test_10_latency_ib_serves_the_same_bars():
    with client(SUNDAY, latency="ib", latency_scale=1000) as (gw, ib):
        assert gw.latency == "ib"
        assert len(ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, 2)) == 390
        gw.latency = 0.0     # settings change while it runs
        assert len(ib.reqHistoricalData(AAPL, "", "1 D", "1 min", "TRADES", True, 2)) == 390


def test_12_concurrency_limit_queues_requests_without_losing_any():
    with client(SUNDAY, hmds_concurrency=1, latency=0.05) as (_, ib):
        contracts = [Stock(s, "SMART", "USD") for s in ("AAPL", "MSFT", "IBM", "NVDA")]
        results = ib.run(*[ib.reqHistoricalDataAsync(c, "", "1 D", "1 hour", "TRADES", True, 2)
                           for c in contracts])
        assert [len(r) for r in results] == [7, 7, 7, 7]


# ----------------------------------------------------------------------------------- #13 #15 #16

def test_13_no_market_data_texts():
    with client(SUNDAY) as (_, ib):
        code, text = error_of(ib, ib.reqHistoricalData, Forex("EURUSD"), "", "1 D", "1 hour",
                              "TRADES", False, 2)
        assert (code, text) == (162, "Historical Market Data Service error message:No "
                                     "historical market data for EUR/CASH@FXSUBPIP Last 1d")
        code, text = error_of(ib, ib.reqHistoricalData, Index("SPX", "CBOE", "USD"), "", "1 D",
                              "1 hour", "MIDPOINT", True, 2)
        assert (code, text) == (162, "Historical Market Data Service error message:No "
                                     "historical market data for SPX/IND@CBOE MidPoint 0")


@pytest.mark.parametrize("text", ["Historical data request pacing violation",
                                  "Too many requests in the last 10 minutes."])
def test_15_pacing_text_variants(text):
    end = "20250411 19:00:00 UTC"
    with client(SUNDAY, pacing="ib", pacing_text=text) as (_, ib):
        assert ib.reqHistoricalData(AAPL, end, "60 S", "5 secs", "TRADES", True, 2)
        code, got = error_of(ib, ib.reqHistoricalData, AAPL, end, "60 S", "5 secs", "TRADES",
                             True, 2)
        assert (code, got) == (162, "Historical Market Data Service error message:" + text)


def test_16_end_date_rules():
    end = "20250411 20:00:00 UTC"
    with client(SUNDAY) as (gw, ib):
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, end, "1 D", "1 hour", "TRADES",
                              True, 2, keepUpToDate=True)
        assert (code, text) == (321, "End date not supported with live updates")
        live = ib.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2,
                                    keepUpToDate=True)
        assert len(live) == 7        # served; no updates stream afterwards
        ib.cancelHistoricalData(live)
        code, text = error_of(ib, ib.reqHistoricalData, AAPL, end, "1 D", "1 day",
                              "ADJUSTED_LAST", True, 2)
        assert (code, text) == (321, "End date not supported with adjusted last")
        adjusted = ib.reqHistoricalData(AAPL, "", "5 D", "1 day", "ADJUSTED_LAST", True, 2)
        trades = ib.reqHistoricalData(AAPL, "", "5 D", "1 day", "TRADES", True, 2)
        assert [b.close for b in adjusted] == [b.close for b in trades]
        cont = Contract(secType="CONTFUT", symbol="ES", exchange="CME")
        (details,) = ib.reqContractDetails(cont)
        assert details.contract.secType == "CONTFUT"
        code, text = error_of(ib, ib.reqHistoricalData, details.contract, end, "1 D",
                              "1 hour", "TRADES", False, 2)
        assert (code, text) == (10339, "Setting end date/time for continuous future security "
                                       "type is not allowed.")
        bars = ib.reqHistoricalData(details.contract, "", "2 Y", "1 day", "TRADES", False, 2)
        assert len(bars) > 480


# ----------------------------------------------------------------------------------- #17

@pytest.mark.parametrize("what", ["TRADES", "MIDPOINT", "BID_ASK"])
def test_17_historical_ticks_at_most_1000(what):
    with client(SUNDAY) as (_, ib):
        ticks = ib.reqHistoricalTicks(AAPL, "", "20250411 19:00:00 UTC", 1000, what, True)
        assert 0 < len(ticks) <= 1000
        times = [tk.time for tk in ticks]
        assert times == sorted(times) and times[-1] <= datetime(2025, 4, 11, 19, tzinfo=UTC)
        if what == "BID_ASK":
            assert all(tk.priceBid < tk.priceAsk for tk in ticks)
        forward = ib.reqHistoricalTicks(AAPL, "20250411 14:00:00 UTC", "", 10, what, True)
        assert len(forward) == 10 and forward[0].time >= datetime(2025, 4, 11, 14, tzinfo=UTC)
        more = ib.reqHistoricalTicks(AAPL, "", "20250411 19:00:00 UTC", 5000, what, True)
        assert len(more) == 1000                              # IB's most per request


def test_unserved_requests_get_an_error_not_silence():
    with client(SUNDAY) as (_, ib):
        ib.reqMktData(Stock("AAPL", "SMART", "USD", conId=265598), "", False, False)
        ib.sleep(0.3)
        refused = [(rid, c) for rid, c, _ in ib.errors if c == 322]
        assert refused and refused[0][0] > 0   # on the request's own id


# ----------------------------------------------------------------------------------- #18

def test_18_connect_notices_then_2106_on_first_historical_use():
    with client(SUNDAY) as (_, ib):
        ib.sleep(0.2)
        notices = [(c, t) for rid, c, t in ib.errors if rid == -1]
        assert [c for c, _ in notices] == [2104, 2107, 2158]
        assert notices[1][1] == ("HMDS data farm connection is inactive but should be "
                                 "available upon demand.ushmds")
        ib.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2)
        ib.reqHistoricalData(AAPL, "", "2 D", "1 hour", "TRADES", True, 2)
        assert [c for rid, c, _ in ib.errors if rid == -1] == [2104, 2107, 2158, 2106]


# ----------------------------------------------------------------------------------- #19 #20 #21

def test_19_maintenance_window_holds_requests_then_answers_them():
    with client(SUNDAY) as (gw, ib):
        gw.maintenance(0.6)
        ib.sleep(0.1)
        bars = ib.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2, timeout=10)
        assert len(bars) == 7                      # answered once the window closed
        codes = [(c, t) for rid, c, t in ib.errors if rid == -1 and c in (1100, 1102)]
        assert codes == [
            (1100, "Connectivity between IB and Trader Workstation has been lost."),
            (1102, "Connectivity between IB and Trader Workstation has been restored - data "
                   "maintained. All data farms are connected: usfarm; ushmds; secdefnj.")]
        assert gw.stats()["maintenance"] is False


def test_20_maintenance_refusals_answer_valid_symbols_with_200():
    with client(SUNDAY, maintenance_refusals=True) as (gw, ib):
        gw.maintenance(30.0)
        ib.sleep(0.1)
        with pytest.raises(RequestError) as err:
            ib.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2)
        assert err.value.code == 200
        with pytest.raises(RequestError) as err:
            ib.reqContractDetails(Stock("MSFT", "SMART", "USD"))
        assert err.value.code == 200


def test_21_restart_keeps_the_old_client_id_for_a_while():
    with gateways() as make:
        gw = make(now=lambda: SUNDAY, pacing="off")
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=4, timeout=10)
        gw.restart(down_for=0.1, hold_client_ids=1.0)
        with contextlib.suppress(ConnectionError):
            ib.sleep(0.2)
        assert 4 in gw.stats()["held_client_ids"]
        again, codes = IB(), []
        again.errorEvent += lambda rid, code, *_: codes.append(code)
        with pytest.raises((TimeoutError, ConnectionError, OSError)):
            again.connect("127.0.0.1", gw.port, clientId=4, timeout=0.5)
        assert 326 in codes
        again.disconnect()
        other = IB()
        other.connect("127.0.0.1", gw.port, clientId=5, timeout=10)   # other ids are free
        other.disconnect()
        ib.sleep(1.0)
        later = IB()
        later.connect("127.0.0.1", gw.port, clientId=4, timeout=10)   # the hold has passed
        assert len(later.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2)) == 7
        later.disconnect()
        ib.disconnect()


# ----------------------------------------------------------------------------------- #22 - #25

def test_22_23_listings_beyond_us_markets():
    with client(datetime(2023, 12, 5, 12, tzinfo=UTC)) as (_, ib):
        (vod,) = ib.reqContractDetails(Stock("VOD", "LSE", ""))
        assert (vod.contract.currency, vod.timeZoneId, vod.contract.primaryExchange) == (
            "GBP", "GB-Eire", "LSE")
        assert "20231205:0800-20231205:1630" in vod.tradingHours
        assert ib.reqContractDetails(Stock("VOD", "SMART", "GBP"))[0].contract.conId == \
            vod.contract.conId
        with pytest.raises(RequestError):
            ib.reqContractDetails(Stock("VOD", "SMART", "USD"))
        (tencent,) = ib.reqContractDetails(Stock("700", "SEHK", ""))
        assert (tencent.contract.currency, tencent.timeZoneId) == ("HKD", "Hongkong")
        assert "20231205:0930-20231205:1200;20231205:1300-20231205:1600" in tencent.tradingHours
        corn = ib.reqContractDetails(Future("ZC", exchange="CBOT"))
        assert len(corn) == 5 and {d.timeZoneId for d in corn} == {"US/Central"}
        assert "20231205:1900-20231206:0745;20231206:0830-20231206:1320" in corn[0].tradingHours
        assert "20231206:0830-20231206:1320" in corn[0].liquidHours
        sessions = corn[0].tradingSessions()
        assert len(sessions) >= 2 * 5 and all(s.start < s.end for s in sessions)


def test_23_bars_skip_the_break_and_follow_local_holidays():
    with client(datetime(2024, 8, 30, 12, tzinfo=UTC)) as (_, ib):
        hk = ib.reqHistoricalData(Stock("700", "SEHK", "HKD"), "20240605 09:00:00 UTC", "1 D",
                                  "1 hour", "TRADES", True, 1)
        # (dates come in the TWS login zone, US/Eastern: look at them in Hong Kong)
        assert [b.date.astimezone(HK).strftime("%H:%M") for b in hk] == [
            "09:30", "10:00", "11:00", "13:00", "14:00", "15:00"]    # no 12:00: lunch
        assert len(ib.reqHistoricalData(Stock("700", "SEHK", "HKD"), "20240605 09:00:00 UTC",
                                        "1 D", "1 min", "TRADES", True, 2)) == 330
        lunar = ib.reqHistoricalData(Stock("700", "SEHK", "HKD"), "20240216 09:00:00 UTC",
                                     "2 W", "1 day", "TRADES", True, 1)
        assert date(2024, 2, 12) not in [b.date for b in lunar]     # Lunar New Year
        vod = ib.reqHistoricalData(Stock("VOD", "LSE", "GBP"), "20240830 17:00:00 UTC", "1 W",
                                   "1 day", "TRADES", True, 1)
        assert date(2024, 8, 26) not in [b.date for b in vod]       # UK summer bank holiday
        aapl = ib.reqHistoricalData(AAPL, "20240830 21:00:00 UTC", "1 W", "1 day", "TRADES",
                                    True, 1)
        assert date(2024, 8, 26) in [b.date for b in aapl]
        zc = ib.reqHistoricalData(Future("ZC", "202409", exchange="CBOT"),
                                  "20240806 19:00:00 UTC", "1 D", "1 hour", "TRADES", False, 1)
        hours = [b.date.astimezone(CT).strftime("%H:%M") for b in zc]
        assert hours[0] == "19:00" and "08:00" not in hours and "08:30" in hours


def test_nyse_early_close_serves_nothing_after_1300():
    with client(datetime(2024, 12, 27, 12, tzinfo=UTC)) as (_, ib):
        bars = ib.reqHistoricalData(AAPL, "20241224 23:00:00 UTC", "1 D", "1 min", "TRADES",
                                    True, 1)
        assert len(bars) == 210 and bars[-1].date.astimezone(ET).strftime("%H:%M") == "12:59"


def test_24_trading_hours_cover_a_week_without_sunday_closed_entries():
    with client(datetime(2025, 3, 5, 15, tzinfo=UTC)) as (_, ib):
        for contract in (Future("ES", exchange="CME"), Forex("EURUSD"), AAPL):
            details = ib.reqContractDetails(contract)[0]
            entries = details.tradingHours.split(";")
            days = {e[:8] for e in entries}
            assert 6 <= len(days) <= 8
            assert "20250308:CLOSED" in entries                    # Saturday
            if contract.secType != "STK":
                assert "20250309:CLOSED" not in entries            # Sunday evening opens
                assert any(e.startswith("20250309:") for e in entries)
            else:
                assert "20250309:CLOSED" in entries


def test_25_futures_expiry_on_the_wire_include_expired_and_contfut(ibapi_app_factory):
    app, _ = ibapi_app_factory(datetime(2024, 3, 1, 12, tzinfo=UTC))
    done = app.expect(3)
    corn = Contract(secType="FUT", symbol="ZC", exchange="CBOT", currency="USD",
                    lastTradeDateOrContractMonth="202403")
    app.reqContractDetails(3, app.convert(corn))
    assert done.wait(10)
    (details,) = app.rows[3]
    assert details.contract.lastTradeDateOrContractMonth == "20240314"
    assert details.lastTradeTime == "17:01:00"          # IB's "20240314-17:01:00"
    with client(datetime(2025, 6, 1, tzinfo=UTC)) as (_, ib):
        listed = ib.reqContractDetails(Future("ES", exchange="CME"))
        everything = ib.reqContractDetails(Future("ES", exchange="CME", includeExpired=True))
        assert len(everything) > len(listed) == 4
        expired = [d for d in everything if d.contract.lastTradeDateOrContractMonth < "20250601"]
        assert expired and all(d.contract.lastTradeDateOrContractMonth >= "20230601"
                               for d in expired)
        expired[0].contract.includeExpired = True
        bars = ib.reqHistoricalData(expired[0].contract, "20240101 00:00:00 UTC", "5 D",
                                    "1 hour", "TRADES", False, 2)
        assert bars   # within two years of expiry: data
        (cont,) = ib.reqContractDetails(Contract(secType="CONTFUT", symbol="ZC",
                                                 exchange="CBOT"))
        assert cont.contract.conId == ib.reqContractDetails(
            Future("ZC", exchange="CBOT"))[0].contract.conId    # the front contract's id


# ----------------------------------------------------------------------------------- #26

def test_26_quote_bars_carry_minus_one_volume_wap_count(ibapi_app_factory):
    app, _ = ibapi_app_factory(SUNDAY)
    for req_id, what in ((4, "MIDPOINT"), (5, "BID"), (6, "ASK")):
        done = app.expect(req_id)
        app.reqHistoricalData(req_id, app.stock("MSFT"), "", "1 D", "1 hour", what, 1, 2,
                              False, [])
        assert done.wait(10)
        assert app.rows[req_id] and all(
            (int(b.volume), float(b.wap), b.barCount) == (-1, -1.0, -1) for b in app.rows[req_id])
    done = app.expect(7)
    app.reqHistoricalData(7, app.stock("MSFT"), "", "1 D", "1 hour", "TRADES", 1, 2, False, [])
    assert done.wait(10)
    assert all(b.volume > 0 and b.barCount > 0 for b in app.rows[7])


# ----------------------------------------------------------------------------------- faults

def test_poison_symbol_drops_only_the_connection_that_asks():
    with gateways() as make:
        gw = make(now=lambda: SUNDAY, pacing="off", poison_symbols=["NVDA"])
        victim, bystander = IB(), IB()
        victim.connect("127.0.0.1", gw.port, clientId=1, timeout=10)
        bystander.connect("127.0.0.1", gw.port, clientId=2, timeout=10)
        try:
            victim.reqHistoricalData(Stock("NVDA", "SMART", "USD"), "", "1 D", "1 hour",
                                     "TRADES", True, 2, timeout=2)
        except (ConnectionError, RequestError):
            pass
        victim.sleep(0.2) if victim.isConnected() else None
        assert not victim.isConnected()
        assert len(bystander.reqHistoricalData(AAPL, "", "1 D", "1 hour", "TRADES", True, 2)) == 7
        assert gw.stats()["poisoned"] == 1
        bystander.disconnect()
        victim.disconnect()


def test_19_a_farm_finishes_its_work_after_a_maintenance_window():
    from ibfarm import BarRequest, IbFarm

    with gateways() as make:
        gw = make(now=lambda: SUNDAY, pacing="off")
        with IbFarm(host="127.0.0.1", port=gw.port, max_workers=1, pacing="off") as farm:
            assert farm.historical_bars(BarRequest("AAPL", "1 hour", "1 D")).result(60)
            gw.maintenance(1.0)
            futures = [farm.historical_bars(BarRequest(s, "1 hour", "1 D"))
                       for s in ("AAPL", "MSFT", "IBM")]
            assert [f.result(60).num_rows for f in futures] == [7, 7, 7]
        assert gw.stats()["errors_sent"].get(1102) == 1
