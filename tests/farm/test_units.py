"""Pieces of the farm that need no gateway: config, contracts, trading hours, Arrow frames."""

from __future__ import annotations

import inspect
import textwrap
from array import array
from datetime import date, datetime, timezone
from types import SimpleNamespace

import pyarrow as pa
import pytest

from ibfarm import FarmConfig, arrow_ipc
from ibfarm.backend import Contract, Forex, Future, Index, Stock
from ibfarm.bars import BAR_SCHEMA
from ibfarm.config import parse_client_ids
from ibfarm.contracts import make_contract, parse_trading_hours
from ibfarm.pacing import PacingPolicy
from ibfarm.worker import bars_to_columns

UTC = timezone.utc


def test_config_defaults():
    config = FarmConfig()
    assert (config.host, config.port, config.max_workers) == ("127.0.0.1", 4002, 2)
    assert config.client_ids == range(1, 33)
    assert config.idle_timeout == 180.0 and config.max_retries == 3 and config.readonly
    assert config.pacing_policy == PacingPolicy.preset("ib")


def test_config_from_env_and_overrides():
    env = {"IB_HOST": "gw", "IB_PORT": "4001", "IBFARM_MAX_WORKERS": "4",
           "IBFARM_CLIENT_IDS": "10-20", "IBFARM_IDLE_TIMEOUT": "5",
           "IBFARM_REQUEST_TIMEOUT": "7.5", "IBFARM_PACING": "conservative",
           "IBFARM_MAX_RETRIES": "1"}
    config = FarmConfig.from_env(env, max_workers=3)
    assert (config.host, config.port, config.max_workers) == ("gw", 4001, 3)
    assert config.client_ids == range(10, 21)
    assert (config.idle_timeout, config.request_timeout, config.max_retries) == (5.0, 7.5, 1)
    assert config.pacing_policy.min_spacing == 2.0
    with pytest.raises(ValueError, match="IBFARM_MAX_WORKERS"):
        FarmConfig.from_env({"IBFARM_MAX_WORKERS": "many"})


@pytest.mark.parametrize("text, expected", [("10-20", range(10, 21)), ("7", range(7, 8)),
                                            ("3:6", range(3, 6))])
def test_parse_client_ids(text, expected):
    assert parse_client_ids(text) == expected


@pytest.mark.parametrize("bad", ["", "a-b", "9-3"])
def test_parse_client_ids_rejects(bad):
    with pytest.raises(ValueError):
        parse_client_ids(bad)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        FarmConfig(max_workers=0)
    with pytest.raises(ValueError):
        FarmConfig(request_timeout=0)
    assert FarmConfig(client_ids="5-6").client_ids == range(5, 7)


def test_make_contract():
    assert make_contract("aapl") == Stock("AAPL", "SMART", "USD")
    assert make_contract("EUR.USD") == Forex("EURUSD", exchange="IDEALPRO")
    assert make_contract("ES", sec_type="FUT") == Future("ES", exchange="CME", currency="USD")
    assert make_contract("SPX", sec_type="IND") == Index("SPX", "CBOE", "USD")
    assert make_contract("VOD", exchange="LSE", currency="GBP") == Stock("VOD", "LSE", "GBP")
    ready = Contract(conId=265598)
    assert make_contract(ready) is ready


def test_trading_hours_stock_days():
    hours = "20241125:0930-20241125:1600;20241128:CLOSED;20241129:0930-20241129:1300"
    sessions = parse_trading_hours(hours, "US/Eastern")
    assert sessions == [
        (datetime(2024, 11, 25, 14, 30, tzinfo=UTC), datetime(2024, 11, 25, 21, 0, tzinfo=UTC)),
        (datetime(2024, 11, 29, 14, 30, tzinfo=UTC), datetime(2024, 11, 29, 18, 0, tzinfo=UTC)),
    ]


def test_trading_hours_fx_sessions_span_dates_and_dst():
    hours = "20240308:1715-20240311:1700;20240311:1715-20240312:1700"
    sessions = parse_trading_hours(hours, "US/Eastern")
    # The first session starts in EST (UTC-5) and ends in EDT (UTC-4).
    assert sessions[0] == (datetime(2024, 3, 8, 22, 15, tzinfo=UTC),
                           datetime(2024, 3, 11, 21, 0, tzinfo=UTC))
    assert sessions[1][0] == datetime(2024, 3, 11, 21, 15, tzinfo=UTC)


def test_trading_hours_rejects_garbage():
    with pytest.raises(ValueError, match="bad trading-hours session"):
        parse_trading_hours("20241125:0930-tomorrow", "US/Eastern")


def _read(chunks) -> pa.Table:
    data = b"".join(chunks)
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


@pytest.mark.parametrize("rows", [0, 1, 7, 5000])
def test_arrow_stream_without_pyarrow_reads_back(rows):
    columns = [array("q", range(1_700_000_000, 1_700_000_000 + rows * 60, 60))]
    columns += [array("d", [i + k / 10 for i in range(rows)]) for k in range(6)]
    columns.append(array("q", range(rows)))
    data = arrow_ipc.stream(BAR_SCHEMA.serialize().to_pybytes(), columns, rows)
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    table.validate(full=True)
    assert table.schema.equals(BAR_SCHEMA) and table.num_rows == rows
    if rows:
        assert table.column("bar_count").to_pylist() == list(range(rows))
        assert table.column("close").to_pylist() == [i + 0.3 for i in range(rows)]
        assert table.column("timestamp")[0].as_py() == datetime.fromtimestamp(1_700_000_000, UTC)


def test_arrow_writer_checks_columns():
    with pytest.raises(ValueError):
        arrow_ipc.record_batch_message([array("i", [1])], 1)


def test_bars_to_columns_intraday_and_daily():
    bar = dict(open=1.0, high=2.0, low=0.5, close=1.5, volume=100, average=1.2, barCount=7)
    intraday = [SimpleNamespace(date=datetime(2024, 6, 7, 13, 30, tzinfo=UTC), **bar)]
    daily = [SimpleNamespace(date=date(2024, 6, 7), **bar)]
    schema = BAR_SCHEMA.serialize().to_pybytes()
    for bars, expected in ((intraday, datetime(2024, 6, 7, 13, 30, tzinfo=UTC)),
                           (daily, datetime(2024, 6, 7, tzinfo=UTC))):
        table = pa.ipc.open_stream(pa.py_buffer(arrow_ipc.stream(
            schema, bars_to_columns(bars), 1))).read_all()
        row = table.to_pylist()[0]
        assert row["timestamp"] == expected
        assert (row["open"], row["volume"], row["wap"], row["bar_count"]) == (1.0, 100.0, 1.2, 7)


def _code(source: str, drop: str = "") -> str:
    """A method's code without comments, whitespace, line breaks, quote style or module
    prefixes, and without the lines starting with ``drop``."""
    out = []
    for line in textwrap.dedent(source).splitlines():
        line = line.split("#", 1)[0].strip().replace("popen_forkserver.", "")
        if line and not (drop and line.startswith(drop)):
            out.append(line)
    return "".join(out).replace(" ", "").replace("'", '"')


def test_worker_popen_launch_is_cpythons_with_only_main_left_out():
    # WorkerPopen._launch copies CPython's private popen_forkserver.Popen._launch to leave the
    # caller's __main__ out of the worker. On a Python whose method differs from the copy this
    # fails, so the copy is reviewed instead of starting workers wrongly.
    from multiprocessing import popen_forkserver

    from ibfarm.worker import WorkerPopen

    ours = _code(inspect.getsource(WorkerPopen._launch), drop='prep_data.pop("init_main_from_')
    assert ours == _code(inspect.getsource(popen_forkserver.Popen._launch))


def test_from_env_reads_only_what_the_caller_did_not_give():
    env = {"IB_PORT": "abc", "IB_GATEWAYS": "10.0.0.5:4002", "IBFARM_MAX_WORKERS": "3"}
    config = FarmConfig.from_env(env, port=4100)
    assert config.addresses[0].key == "127.0.0.1:4100" and config.max_workers == 3
    with pytest.raises(ValueError, match="IB_PORT='abc'"):
        FarmConfig.from_env(env)
