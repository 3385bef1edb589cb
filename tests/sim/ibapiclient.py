"""The official IB client (``ibapi``), unmodified, recording its callbacks per request id."""

from __future__ import annotations

import contextlib
import threading

from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.wrapper import EWrapper


class Recorder(EWrapper, EClient):
    """Collects callbacks per request id; each request ends in an Event."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.ready = threading.Event()
        self.done: dict[int, threading.Event] = {}
        self.rows: dict[int, list] = {}
        self.errors: dict[int, list[tuple[int, str]]] = {}
        self.ends: dict[int, tuple[str, str]] = {}

    def expect(self, req_id: int) -> threading.Event:
        self.rows[req_id] = []
        self.done[req_id] = threading.Event()
        return self.done[req_id]

    def nextValidId(self, orderId: int) -> None:  # noqa: N802,N803 (ibapi's names)
        self.ready.set()

    def error(self, reqId, errorTime, errorCode, errorString, advancedOrderRejectJson=""):  # noqa: N803
        self.errors.setdefault(reqId, []).append((errorCode, errorString))
        if reqId in self.done and errorCode < 2100:
            self.done[reqId].set()

    def contractDetails(self, reqId, contractDetails):  # noqa: N802,N803
        self.rows[reqId].append(contractDetails)

    def contractDetailsEnd(self, reqId):  # noqa: N802,N803
        self.done[reqId].set()

    def historicalData(self, reqId, bar):  # noqa: N802,N803
        self.rows[reqId].append(bar)

    def historicalDataEnd(self, reqId, start, end):  # noqa: N802,N803
        self.ends[reqId] = (start, end)
        self.done[reqId].set()

    def headTimestamp(self, reqId, headTimestamp):  # noqa: N802,N803
        self.rows[reqId].append(headTimestamp)
        self.done[reqId].set()


    @staticmethod
    def stock(symbol: str, exchange: str = "SMART", currency: str = "USD") -> Contract:
        c = Contract()
        c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", exchange, currency
        return c

    @staticmethod
    def convert(contract) -> Contract:
        """An ``ibapi`` contract with the fields of a backend (ib_async) contract."""
        c = Contract()
        for name in ("symbol", "secType", "exchange", "currency",
                     "lastTradeDateOrContractMonth", "conId"):
            setattr(c, name, getattr(contract, name))
        return c


@contextlib.contextmanager
def connected(port: int, client_id: int = 11):
    """A ``Recorder`` connected to the gateway on ``port``, its reader thread running."""
    client = Recorder()
    client.connect("127.0.0.1", port, clientId=client_id)
    thread = threading.Thread(target=client.run, daemon=True)
    thread.start()
    try:
        assert client.ready.wait(10), "no nextValidId from the gateway"
        yield client
    finally:
        client.disconnect()
        thread.join(10)
