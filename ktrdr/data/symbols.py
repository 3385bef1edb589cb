"""ktrdr's symbols: what a symbol may look like, and how it names a listing.

A symbol is ``ROOT`` or ``ROOT@EXCHANGE``:

* ``AAPL``, ``SPY``, ``BRK-B``: a US listing (IB's SMART routing in USD);
* ``EUR.USD``: a forex pair (base and quote currency);
* ``VOD@LSE``, ``700@SEHK``, ``ZC@CBOT``, ``ES@CME``: a listing on a named exchange, whose
  currency, zone and sessions come from the provider's contract details.

The same pattern serves the store (a symbol is a partition value and a path part, so no "/"
and no "..", nor anything else a path or URL would read differently), the CLI and the HTTP
API: ``SYMBOL_PATTERN`` is the one definition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``ROOT`` or ``ROOT@EXCHANGE``: a root of 1-20 letters, digits, "." and "-" starting with a
#: letter or digit, an exchange of 1-12 letters, digits, "." and "_" (IB's ``OSE.JPN``).
SYMBOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,19}(@[A-Za-z0-9][A-Za-z0-9._]{0,11})?$"
_SYMBOL_RE = re.compile(SYMBOL_PATTERN)
#: Examples for error messages and API documentation.
SYMBOL_EXAMPLES = ("AAPL", "EUR.USD", "BRK-B", "VOD@LSE", "700@SEHK", "ZC@CBOT")


class InvalidSymbolError(ValueError):
    """A symbol ktrdr cannot use (it could not name a listing, a file or a partition)."""


@dataclass(frozen=True)
class Symbol:
    """A parsed symbol: ``root`` and, for ``ROOT@EXCHANGE``, ``exchange``."""

    root: str
    exchange: str | None = None

    def __str__(self) -> str:
        return self.root if self.exchange is None else f"{self.root}@{self.exchange}"


def normalize_symbol(symbol: str) -> str:
    """The symbol upper-cased and checked (``" vod@lse "`` -> ``"VOD@LSE"``).

    Raises:
        InvalidSymbolError: not ``ROOT`` or ``ROOT@EXCHANGE`` as described above; the
            message says what is allowed.
    """
    text = (symbol or "").strip().upper() if isinstance(symbol, str) else ""
    if not _SYMBOL_RE.match(text) or ".." in text:
        raise InvalidSymbolError(
            f"invalid symbol {symbol!r}: use 1-20 letters, digits, '.' or '-', optionally "
            f"followed by @EXCHANGE (e.g. {', '.join(SYMBOL_EXAMPLES)})")
    return text


def parse_symbol(symbol: str) -> Symbol:
    """``"VOD@LSE"`` -> ``Symbol("VOD", "LSE")``; ``"AAPL"`` -> ``Symbol("AAPL")``.

    Raises:
        InvalidSymbolError: see ``normalize_symbol``.
    """
    root, _, exchange = normalize_symbol(symbol).partition("@")
    return Symbol(root, exchange or None)


__all__ = ["SYMBOL_EXAMPLES", "SYMBOL_PATTERN", "InvalidSymbolError", "Symbol",
           "normalize_symbol", "parse_symbol"]
