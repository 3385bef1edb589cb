"""``ktrdr api --host``: a loopback address serves without a token; any other address needs
``KTRDR_API_TOKEN`` or ``--insecure``."""

from __future__ import annotations

import pytest

from ktrdr.api.serve import InsecureBindError, check_bind, is_loopback
from tests.api.conftest import ApiServer, free_port


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False),
])
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback
    if loopback:
        check_bind(host, None)
    else:
        with pytest.raises(InsecureBindError, match="KTRDR_API_TOKEN"):
            check_bind(host, None)
        check_bind(host, "a-token")
        check_bind(host, None, insecure=True)


def test_insecure_serves_an_open_address_and_says_so(tmp_path):
    server = ApiServer(free_port(), tmp_path / "data", tmp_path / "server.log",
                       command=("-m", "ktrdr.cli", "api", "--host", "0.0.0.0", "--insecure"))
    try:
        server.wait_ready()  # reached on 127.0.0.1
        assert server.client.get("/health").status_code == 503  # no gateway: still serving
    finally:
        server.stop()
    assert "without a token (--insecure)" in server.log()
    assert "Traceback" not in server.log()
