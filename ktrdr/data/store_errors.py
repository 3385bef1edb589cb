"""The bar store's exceptions (re-exported by ``ktrdr.data.store``).

=======================  ===================================================  ===========
exception                what happened                                        CLI exit
=======================  ===================================================  ===========
``StoreError``           any problem of the store (the base class)            1
``DataCorruptError``     a stored file cannot be read; it is left as it is    1
``SourceMismatchError``  bars of one source offered to another's partition    1
``StoreUnusableError``   the data directory cannot be used at all (a file     2
                         where a folder should be, read-only, no bucket, no
                         connection, an unsupported URL)
=======================  ===================================================  ===========
"""

from __future__ import annotations

import os
from pathlib import Path


class StoreError(Exception):
    """A problem with the bar store."""


class DataCorruptError(StoreError):
    """A stored file that cannot be read. It is never overwritten automatically.

    Attributes:
        path: the file (a ``Path`` on a local disk, a URL such as ``s3://bucket/key``
            elsewhere).
        reason: what the reader said.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path: Path | str = _as_path(path)
        self.reason = reason
        super().__init__(
            f"stored file {self.path} is unreadable ({reason}); it was left as it is: move it "
            f"away or delete it, then load the data again")


class SourceMismatchError(StoreError):
    """Bars from one source (e.g. the simulator) offered to a partition of another (IB)."""


class StoreUnusableError(StoreError):
    """The data directory cannot be used; the message says why and what to do."""


def _as_path(path: str | os.PathLike) -> Path | str:
    text = os.fspath(path)
    return text if "://" in text else Path(text)


__all__ = ["DataCorruptError", "SourceMismatchError", "StoreError", "StoreUnusableError"]
