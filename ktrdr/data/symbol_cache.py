"""What the provider said about each symbol (contract, trading hours, head timestamp), kept in
the data directory so repeated runs do not ask again.

One small JSON file per source, ``<data_dir>/_symbol_cache/<source>.json`` (the simulator's
head timestamps are not IB's), on whatever filesystem the store uses (a local folder or a
URL, see ``filesystems.py``), written atomically like the bar files. The leading "_" keeps
it out of every dataset reader's way.

Contract information is kept for 30 days and head timestamps for a day (IB's history grows
at the front only rarely, but a listing can change).
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ktrdr.data.external_data_interface import ContractInfo
from ktrdr.data.filesystems import Location, open_location

log = logging.getLogger(__name__)

CONTRACT_TTL = 30 * 86400.0
HEAD_TTL = 86400.0
#: The cache's folder under the data directory.
CACHE_DIR = "_symbol_cache"


class SymbolCache:
    """A small JSON file of per-symbol facts, each with the (wall-clock) time it was learnt.

    Args:
        where: a ``BarStore`` (its source's cache), or a data directory (path or URL).
        source: the source, when ``where`` is a data directory (default "ib").
    """

    def __init__(self, where: Any, contract_ttl: float = CONTRACT_TTL,
                 head_ttl: float = HEAD_TTL, *, source: str | None = None):
        if hasattr(where, "cache_path") and hasattr(where, "location"):
            self._location: Location = where.location
            self._file = where.cache_path
        else:
            self._location = open_location(where if isinstance(where, Location)
                                           else os.fspath(where))
            self._file = self._location.join(CACHE_DIR, f"{source or 'ib'}.json")
        self.contract_ttl = contract_ttl
        self.head_ttl = head_ttl
        self._data: dict[str, dict[str, Any]] | None = None

    @property
    def path(self) -> Path | str:
        """The cache's file (a path, or a URL)."""
        return self._location.display(self._file)

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            try:
                self._data = json.loads(self._location.read_bytes(self._file))
                if not isinstance(self._data, dict):
                    raise ValueError("not an object")
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable symbol cache %s (%s)", self.path, exc)
                self._data = {}
        return self._data

    def _save(self) -> None:
        entries = self._load()
        data = json.dumps(entries, indent=1, sort_keys=True).encode()
        self._location.write_bytes_atomic(self._file, data)

    def contract(self, symbol: str) -> ContractInfo | None:
        entry = self._load().get(symbol, {})
        if "contract" not in entry or time.time() - entry.get("contract_at", 0) > self.contract_ttl:
            return None
        try:
            return ContractInfo.from_dict(entry["contract"])
        except (TypeError, ValueError):
            return None

    def set_contract(self, symbol: str, info: ContractInfo) -> None:
        entry = self._load().setdefault(symbol, {})
        entry["contract"] = info.to_dict()
        entry["contract_at"] = time.time()
        self._save()

    def head(self, symbol: str) -> datetime | None | bool:
        """The cached head timestamp; ``False`` when nothing fresh is cached."""
        entry = self._load().get(symbol, {})
        if "head" not in entry or time.time() - entry.get("head_at", 0) > self.head_ttl:
            return False
        return datetime.fromisoformat(entry["head"]) if entry["head"] else None

    def set_head(self, symbol: str, head: datetime | None) -> None:
        entry = self._load().setdefault(symbol, {})
        entry["head"] = head.isoformat() if head else None
        entry["head_at"] = time.time()
        self._save()
