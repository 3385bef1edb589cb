"""The TWS socket protocol as the simulated gateway speaks it.

Framing: after the client's ``b"API\\0"`` greeting, every message in both directions is a
4-byte big-endian length and a payload of ``\\0``-terminated text fields; field 0 is the
message id (as text, at server versions below 201). The gateway answers the version range
the client offers with ``min(client max, SERVER_VERSION)``; layouts below are those of 157..176.
"""

from __future__ import annotations

import re
import struct

#: Highest server version the simulator speaks: the highest both ib_insync 0.9.86 and the
#: current official client decode (above it, bar and error layouts change).
SERVER_VERSION = 176
MIN_CLIENT_VERSION = 100

# Client -> server message ids.
REQ_OPEN_ORDERS = 5
REQ_ACCT_DATA = 6
REQ_EXECUTIONS = 7
REQ_IDS = 8
REQ_CONTRACT_DATA = 9
REQ_AUTO_OPEN_ORDERS = 15
REQ_MANAGED_ACCTS = 17
REQ_HISTORICAL_DATA = 20
CANCEL_HISTORICAL_DATA = 25
REQ_CURRENT_TIME = 49
REQ_POSITIONS = 61
REQ_ACCOUNT_SUMMARY = 62
CANCEL_ACCOUNT_SUMMARY = 63
START_API = 71
REQ_ACCOUNT_UPDATES_MULTI = 76
REQ_HEAD_TIMESTAMP = 87
CANCEL_HEAD_TIMESTAMP = 90
REQ_HISTORICAL_TICKS = 96
REQ_COMPLETED_ORDERS = 99

# Server -> client message ids.
ERR_MSG = 4
NEXT_VALID_ID = 9
CONTRACT_DATA = 10
MANAGED_ACCTS = 15
HISTORICAL_DATA = 17
CURRENT_TIME = 49
CONTRACT_DATA_END = 52
OPEN_ORDER_END = 53
ACCT_DOWNLOAD_END = 54
EXECUTION_DATA_END = 55
POSITION_END = 62
ACCOUNT_SUMMARY_END = 64
ACCOUNT_UPDATE_MULTI_END = 74
HEAD_TIMESTAMP = 88
HISTORICAL_TICKS = 96
HISTORICAL_TICKS_BID_ASK = 97
HISTORICAL_TICKS_LAST = 98
COMPLETED_ORDERS_END = 102

# Version switches the layouts depend on.
SIZE_RULES = 164  # CONTRACT_DATA loses its version field and gains size increments
ADVANCED_ORDER_REJECT = 166  # ERR_MSG gains advancedOrderRejectJson
BOND_ISSUERID = 176  # REQ_CONTRACT_DATA gains issuerId

_VERSION_RE = re.compile(r"^v(\d+)(?:\.\.(\d+))?(?: (.*))?$")
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """A client sent something the gateway cannot parse."""


def frame(payload: bytes) -> bytes:
    """Length-prefix ``payload``."""
    return _HEADER.pack(len(payload)) + payload


def encode(*fields: object) -> bytes:
    """One framed message from ``fields`` (bools as 1/0, None as empty)."""
    return frame(b"".join(_field(f) + b"\0" for f in fields))


def _field(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"1" if value else b"0"
    text = str(value)
    # The official client unicode-unescapes strings at version >= 153: send ASCII only.
    return text.encode("ascii", "backslashreplace")


def split_fields(payload: bytes) -> list[str]:
    """Payload -> text fields (the trailing empty element dropped)."""
    fields = payload.decode("utf-8", "backslashreplace").split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


def header_length(header: bytes) -> int:
    """The payload length a 4-byte header announces."""
    return _HEADER.unpack(header)[0]


def negotiate(version_text: str) -> int:
    """The server version to use for a client's ``"v157..176"`` greeting.

    Raises:
        ProtocolError: the greeting is malformed or the client too old.
    """
    match = _VERSION_RE.match(version_text.strip())
    if not match:
        raise ProtocolError(f"bad version greeting {version_text!r}")
    client_max = int(match.group(2) or match.group(1))
    if client_max < MIN_CLIENT_VERSION:
        raise ProtocolError(f"client version {client_max} below {MIN_CLIENT_VERSION}")
    return min(client_max, SERVER_VERSION)


def error_message(server_version: int, req_id: int, code: int, text: str) -> bytes:
    """ERR_MSG in the layout the negotiated version expects."""
    if server_version >= ADVANCED_ORDER_REJECT:
        return encode(ERR_MSG, 2, req_id, code, text, "")
    return encode(ERR_MSG, 2, req_id, code, text)


class FieldReader:
    """Reads a request's fields in order; a bad field is a protocol error (IB answers 320)."""

    def __init__(self, fields: list[str]):
        self._fields = fields
        self._pos = 0

    def text(self) -> str:
        if self._pos >= len(self._fields):
            raise ProtocolError("message too short")
        value = self._fields[self._pos]
        self._pos += 1
        return value

    def int(self, default: int = 0) -> int:
        value = self.text()
        if value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ProtocolError(
                f'java.lang.NumberFormatException: For input string: "{value}"') from None

    def float(self) -> float:
        value = self.text()
        try:
            return float(value) if value else 0.0
        except ValueError:
            raise ProtocolError(
                f'java.lang.NumberFormatException: For input string: "{value}"') from None

    def bool(self) -> bool:
        return self.int() != 0

    def skip(self, count: int = 1) -> None:
        for _ in range(count):
            self.text()

    def remaining(self) -> int:
        return len(self._fields) - self._pos


def read_contract(reader: FieldReader) -> dict:
    """The contract block of REQ_HISTORICAL_DATA / REQ_HEAD_TIMESTAMP (conId .. includeExpired)."""
    contract = {
        "con_id": reader.int(),
        "symbol": reader.text(),
        "sec_type": reader.text(),
        "last_trade": reader.text(),
    }
    reader.float()  # strike
    reader.text()  # right
    reader.text()  # multiplier
    contract.update(exchange=reader.text(), primary_exchange=reader.text(),
                    currency=reader.text(), local_symbol=reader.text())
    reader.text()  # tradingClass
    contract["include_expired"] = reader.bool()
    return contract
