"""The dates and times both command lines read (``ibfarm fetch --end``, ``ktrdr ... --start``).

One strict grammar, so that a date means the same thing everywhere and a form that could mean two
things is refused instead of guessed::

    text ──► ISO 8601      2024-01-02 | 2024-01-02T16:00[:05[.123]] (a space may replace the T)
         │                 + optional zone: Z | +02:00 | -0500 | a zone id (" US/Eastern")
         ├─► IB's own      20240102 | 20240102 16:00:00 [zone id] | 20240102-16:00:00 (UTC)
         └─► anything else (01-02-2024, 2024/01/01, Jan 2 2024, ...) ──► DateFormatError,
                           whose message lists the accepted forms
                  │
                  ▼
         an aware ``datetime`` in UTC (no zone given: UTC)

Zone ids are IB's ``timeZoneId`` values ("US/Eastern", "GB-Eire", "EST", ...), mapped to IANA
zones through ``ibfarm.contracts.iana_zone``, or any IANA name ("America/New_York"). An unknown
zone id is refused (``iana_zone`` itself would fall back to UTC, which is right for a contract's
metadata and wrong for a date someone typed).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = timezone.utc

#: The accepted forms, as the error message and the command lines' help list them.
ACCEPTED_FORMS = (
    "2024-01-02 (midnight UTC)",
    "2024-01-02T16:00 or 2024-01-02 16:00:00 (UTC)",
    "2024-01-02T16:00Z, 2024-01-02T16:00+02:00, 2024-01-02T11:00-0500",
    "20240102 16:00:00 US/Eastern (IB's form; any IB or IANA zone id)",
    "20240102-16:00:00 (IB's UTC form)",
)
#: One line for ``--help``.
HELP = ("ISO 8601 (2024-01-02, 2024-01-02T16:00, ...Z or +02:00) or IB's "
        "'20240102 16:00:00 US/Eastern'; no zone means UTC")

_TIME = r"(?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
_OFFSET = r"(?P<offset>Z|[+-]\d{2}(?::?\d{2})?)"
_ZONE = r"\s+(?P<zone>[A-Za-z][A-Za-z0-9_+\-/]*)"
_FORMS = (
    # ISO: date, optional time, optional offset (only after a time) or zone id
    re.compile(rf"(?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?:[T ]{_TIME}{_OFFSET}?)?(?:{_ZONE})?", re.I),
    # IB: yyyymmdd, optional " hh:mm:ss", optional zone id
    re.compile(rf"(?P<compact>\d{{8}})(?:\s+(?P<ibtime>\d{{2}}:\d{{2}}:\d{{2}}))?(?:{_ZONE})?"),
    # IB's UTC form: yyyymmdd-hh:mm:ss
    re.compile(r"(?P<compact>\d{8})-(?P<ibtime>\d{2}:\d{2}:\d{2})"),
)
#: Shapes people type that put the day and month in an order this grammar will not guess.
_AMBIGUOUS = re.compile(r"\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


class DateFormatError(ValueError):
    """A date or time in none of the accepted forms (the message lists them)."""


def accepted_forms() -> str:
    """The accepted forms, as one line."""
    return "; ".join(ACCEPTED_FORMS)


def parse_when(value: str | datetime | date | None, *, what: str = "date") -> datetime | None:
    """``value`` as an aware UTC datetime (None and "" stay None).

    Args:
        value: text in one of the accepted forms (module docstring), or a ``datetime``
            (naive means UTC) or ``date`` (midnight UTC).
        what: how the error message names the value (e.g. ``"--end"``).

    Raises:
        DateFormatError: none of the accepted forms, an impossible date (2024-02-30), or an
            unknown zone id.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = str(value).strip()
    if not text:
        return None
    for form in _FORMS:
        match = form.fullmatch(text)
        if match is not None:
            return _build(match.groupdict(), text, what)
    why = ("day and month order is ambiguous" if _AMBIGUOUS.fullmatch(text)
           else "not a form this command reads")
    raise DateFormatError(f"{what} {text!r}: {why}; use {accepted_forms()}")


def _build(parts: dict, text: str, what: str) -> datetime:
    if parts.get("compact"):
        day = parts["compact"]
        iso = f"{day[:4]}-{day[4:6]}-{day[6:]}"
        clock = parts.get("ibtime")
    else:
        iso, clock = parts["date"], parts.get("time")
    if clock:
        iso += "T" + clock
    try:
        stamp = datetime.fromisoformat(iso)
    except ValueError:
        raise DateFormatError(f"{what} {text!r} is not a real date or time; use "
                              f"{accepted_forms()}") from None
    offset, zone = parts.get("offset"), parts.get("zone")
    if offset and zone:
        raise DateFormatError(f"{what} {text!r} has both an offset and a zone id; give one")
    if offset:
        try:
            stamp = stamp.replace(tzinfo=_offset(offset))
        except ValueError:
            raise DateFormatError(f"{what} {text!r}: offset {offset!r} is not a UTC offset "
                                  f"(-23:59 to +23:59)") from None
    elif zone:
        stamp = stamp.replace(tzinfo=zone_info(zone, what=what))
    else:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC)


def _offset(text: str) -> timezone:
    if text.upper() == "Z":
        return UTC
    digits = text[1:].replace(":", "")
    minutes = int(digits[:2]) * 60 + (int(digits[2:]) if len(digits) > 2 else 0)
    if minutes >= 24 * 60:
        raise ValueError(text)
    return timezone((-1 if text[0] == "-" else 1) * timedelta(minutes=minutes))


def zone_info(zone: str, *, what: str = "zone") -> ZoneInfo:
    """The zone of an IB ``timeZoneId`` or an IANA name.

    Raises:
        DateFormatError: neither.
    """
    from ibfarm.contracts import IB_ZONES, iana_zone  # the backend import only when needed

    name = zone.strip()
    if name not in IB_ZONES:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise DateFormatError(
                f"{what}: unknown time zone {name!r}; use an IB zone id such as US/Eastern or "
                f"an IANA name such as America/New_York") from None
    return ZoneInfo(iana_zone(name))


__all__ = ["ACCEPTED_FORMS", "HELP", "DateFormatError", "accepted_forms", "parse_when",
           "zone_info"]
