"""The store on object storage: a real S3-compatible server (moto's standalone server on
127.0.0.1, port 0) reached through pyarrow's S3 filesystem with the standard AWS environment.

A backfill on the simulator to the bucket reads back equal to the same backfill on a local
folder; writes are whole objects (a failed write, also one cut off by a server that went
away, leaves no object behind); a corrupt object is named by its URL and left alone; an
unusable bucket is found before anything starts. The server and everything it made (its
objects, its thread, its socket) are gone at the end of the module.
"""

from __future__ import annotations

import logging
import socket
import urllib.request
from datetime import datetime, timezone

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ktrdr.cli import app
from ktrdr.data.data_manager import DataManager
from ktrdr.data.store import BarStore, DataCorruptError, StoreUnusableError

from .conftest import historical

moto_server = pytest.importorskip("moto.server")

UTC = timezone.utc
BUCKET = "ktrdr-test"
START, END = datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)
SYMBOLS = ["AAPL", "EUR.USD", "SPY"]


class S3Server:
    """moto's server on a free local port, in this process."""

    def __init__(self):
        self.start(0)
        self.endpoint = f"http://{self.host}:{self.port}"

    def start(self, port: int) -> None:
        """Listen on ``port`` (0: a free one); a restart keeps the objects."""
        self._server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port,
                                                      verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self._server._server.server_close()  # the listening socket, not only the loop
            self.running = False

    def reset(self) -> None:
        """Forget every bucket and object (moto keeps them in this process's memory)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass


def _port_is_closed(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(2)
        return probe.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def s3():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = S3Server()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        admin = pafs.S3FileSystem(endpoint_override=f"{server.host}:{server.port}",
                                  scheme="http", region="us-east-1", access_key="testing",
                                  secret_key="testing", allow_bucket_creation=True,
                                  allow_bucket_deletion=True)
        admin.create_dir(BUCKET)
        try:
            yield server, admin
        finally:
            server.reset()
            port = server.port
            server.stop()
            assert _port_is_closed(port)


@pytest.fixture
def bucket_prefix(s3, request):
    """A fresh prefix in the bucket for each test (deleted afterwards)."""
    _, admin = s3
    prefix = f"{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"
    yield f"s3://{prefix}", prefix
    admin.delete_dir_contents(prefix, missing_dir_ok=True)


def two_bars() -> pd.DataFrame:
    index = pd.date_range("2024-03-01", periods=2, freq="h", tz="UTC",
                          name="timestamp").as_unit("ns")
    return pd.DataFrame({c: [1.0, 2.0] for c in ("open", "high", "low", "close", "volume")},
                        index=index)


def keys(admin, prefix: str) -> dict[str, int]:
    infos = admin.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return {i.path[len(prefix) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}


def test_a_backfill_to_s3_reads_back_equal_to_the_same_on_a_local_folder(
        s3, bucket_prefix, tmp_path, sim, provider):
    url, prefix = bucket_prefix
    _, admin = s3
    with DataManager(url, provider) as remote, DataManager(tmp_path / "data", provider) as local:
        for manager in (remote, local):
            reports = manager.backfill(SYMBOLS, "1h", START, END)
            assert all(r.ok and r.gaps_left == 0 and r.rows > 0 for r in reports), reports
        assert str(remote.store.root) == f"s3://{prefix}/source=sim"
        for symbol in SYMBOLS:
            a = remote.store.read(symbol, "1h")
            b = local.store.read(symbol, "1h")
            pd.testing.assert_frame_equal(a.frame, b.frame)
            assert a.fetched == b.fetched and a.meta["source"] == b.meta["source"] == "sim"
            pd.testing.assert_frame_equal(remote.load_data(symbol, "1h", START, END),
                                          local.load_data(symbol, "1h", START, END))
        local_files = sorted(str(p.relative_to(tmp_path / "data"))
                             for p in (tmp_path / "data").rglob("*") if p.is_file())
        assert sorted(keys(admin, prefix)) == local_files  # same objects as files
        assert not [k for k in keys(admin, prefix) if ".tmp-" in k]
    # The symbol cache lives in the bucket too: a new manager asks the gateway nothing.
    before = historical(sim), sim.stats()["requests"]
    with DataManager(url, provider) as again:
        reports = again.backfill(SYMBOLS, "1h", START, END)
    assert [r.requests for r in reports] == [0, 0, 0]
    assert (historical(sim), sim.stats()["requests"]) == before


def test_a_failed_write_leaves_no_object(s3, bucket_prefix, monkeypatch):
    url, prefix = bucket_prefix
    _, admin = s3
    store = BarStore(url, "sim")
    frame = two_bars()
    store.write("AAPL", "1h", frame, [], {"source": "sim"})
    before = keys(admin, prefix)
    real_write = pq.write_table

    def dies_half_way(table, where, **kw):
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        store.write("AAPL", "1h", pd.concat([frame, frame.shift(1, freq="D")]), [])
    monkeypatch.setattr(pq, "write_table", real_write)
    assert keys(admin, prefix) == before
    assert len(BarStore(url, "sim").read("AAPL", "1h").frame) == 2


def test_a_write_cut_off_by_the_server_leaves_the_old_objects(s3, bucket_prefix):
    server, admin = s3
    url, prefix = bucket_prefix
    store = BarStore(url, "sim")
    frame = two_bars()
    store.write("AAPL", "1h", frame, [], {"source": "sim"})
    before = {k: admin.open_input_stream(f"{prefix}/{k}").read() for k in keys(admin, prefix)}
    server.stop()  # the server goes away; its objects stay in this process's memory
    try:
        with pytest.raises(OSError):
            store.write("AAPL", "1h", frame * 2, [], {"source": "sim"})
    finally:
        server.start(server.port)  # the same endpoint comes back, with the same objects
    after = {k: admin.open_input_stream(f"{prefix}/{k}").read() for k in keys(admin, prefix)}
    assert after == before
    pd.testing.assert_frame_equal(BarStore(url, "sim").read("AAPL", "1h").frame[frame.columns],
                                  frame, check_freq=False)


def test_a_corrupt_object_is_named_by_its_url_and_left_alone(s3, bucket_prefix):
    url, prefix = bucket_prefix
    _, admin = s3
    key = f"{prefix}/source=ib/timeframe=1d/symbol=AAPL/2020-2029.parquet"
    with admin.open_output_stream(key) as out:
        out.write(b"PAR1 not really")
    store = BarStore(url)
    with pytest.raises(DataCorruptError) as err:
        store.read("AAPL", "1d")
    assert err.value.path == f"s3://{key}" and f"s3://{key}" in str(err.value)
    frame = pd.DataFrame({c: [1.0] for c in ("open", "high", "low", "close", "volume")},
                         index=pd.DatetimeIndex(["2024-01-02"], tz="UTC"))
    with pytest.raises(DataCorruptError):
        store.write("AAPL", "1d", frame, [])
    assert admin.open_input_stream(key).read() == b"PAR1 not really"


def test_an_unusable_bucket_is_found_before_anything_starts(s3, monkeypatch):
    with pytest.raises(StoreUnusableError, match="does not exist"):
        BarStore("s3://no-such-bucket/data").check_usable()
    with socket.socket() as spare:  # a port where nothing listens
        spare.bind(("127.0.0.1", 0))
        dead = spare.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{dead}")
    with pytest.raises(StoreUnusableError, match="cannot reach"):
        BarStore(f"s3://{BUCKET}/data").check_usable()
    result = CliRunner().invoke(app, ["data", "load", "AAPL", "1d", "--sim", "--data-dir",
                                      f"s3://{BUCKET}/data"])
    assert result.exit_code == 2, result.output
    assert "cannot reach" in result.output and "AWS_ENDPOINT_URL" in result.output
    assert "simulated IB Gateway" not in result.output  # nothing was started


def test_query_runs_on_the_bucket(s3, bucket_prefix, provider):
    url, _ = bucket_prefix
    pytest.importorskip("duckdb")
    with DataManager(url, provider) as manager:
        manager.backfill(["AAPL", "MSFT"], "1d", START, END)
        rows = {s: len(manager.load_data(s, "1d", mode="local")) for s in ("AAPL", "MSFT")}
    result = CliRunner().invoke(app, ["data", "query", "--sim", "--data-dir", url, "--format",
                                      "csv", "SELECT symbol, count(*) AS n FROM bars "
                                      "GROUP BY symbol ORDER BY symbol"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["symbol,n", f"AAPL,{rows['AAPL']}",
                                          f"MSFT,{rows['MSFT']}"]
