"""A minimal TWS-protocol client on a plain socket, for messages no library sends on purpose."""

from __future__ import annotations

import socket
import struct


class RawClient:
    def __init__(self, port: int, client_id: int = 1, version: str = "v157..176"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        payload = version.encode()
        self.sock.sendall(b"API\0" + struct.pack(">I", len(payload)) + payload)
        self.handshake = self.read()
        self.send(71, 2, client_id, "")

    def send(self, *fields: object) -> None:
        payload = b"".join(str(f).encode() + b"\0" for f in fields)
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def read(self) -> list[str] | None:
        """The next message's fields, or None once the gateway closed the connection."""
        header = self._exactly(4)
        if header is None:
            return None
        body = self._exactly(struct.unpack(">I", header)[0])
        return None if body is None else body.decode().split("\0")[:-1]

    def read_until(self, msg_id: str, limit: int = 200) -> list[str] | None:
        for _ in range(limit):
            fields = self.read()
            if fields is None or fields[0] == msg_id:
                return fields
        return None

    def drain(self) -> list[list[str]]:
        """Every message until the gateway closes the connection."""
        seen = []
        while (fields := self.read()) is not None:
            seen.append(fields)
        return seen

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except (TimeoutError, ConnectionResetError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()
