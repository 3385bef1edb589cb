"""What the provider said about each symbol (contract, trading hours, head timestamp), kept in
``data_dir/symbol_cache.json`` so repeated runs do not ask again.

Contract information is kept for 30 days and head timestamps for a day (IB's history grows
at the front only rarely, but a listing can change). Writes are atomic.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ktrdr.data.external_data_interface import ContractInfo
from ktrdr.data.store import atomic_write

log = logging.getLogger(__name__)

CONTRACT_TTL = 30 * 86400.0
HEAD_TTL = 86400.0
FILE_NAME = "symbol_cache.json"


class SymbolCache:
    """A small JSON file of per-symbol facts, each with the (wall-clock) time it was learnt."""

    def __init__(self, data_dir: Path, contract_ttl: float = CONTRACT_TTL,
                 head_ttl: float = HEAD_TTL):
        self.path = Path(data_dir) / FILE_NAME
        self.contract_ttl = contract_ttl
        self.head_ttl = head_ttl
        self._data: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            try:
                self._data = json.loads(self.path.read_text())
                if not isinstance(self._data, dict):
                    raise ValueError("not an object")
            except FileNotFoundError:
                self._data = {}
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable symbol cache %s (%s)", self.path, exc)
                self._data = {}
        return self._data

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        entries = self._load()
        atomic_write(self.path, lambda handle: json.dump(entries, handle, indent=1,
                                                         sort_keys=True), binary=False)

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
