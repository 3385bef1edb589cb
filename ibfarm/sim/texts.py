"""IB's wire texts, as the simulated gateway sends them, with where each was seen.

One home for every code and text the simulator answers with (the README's errors table
follows this module). ``{}`` marks the parts IB fills in.
"""

from __future__ import annotations

from ibfarm.bars import LEGAL_BAR_SIZES

HMDS_PREFIX = "Historical Market Data Service error message:"

# ------------------------------------------------------------------ connection (reqId -1)
#: Sent after START_API, in IB's order (TWS sample logs): the market farm is up, the
#: historical farm idles until used, the sec-def farm is up.
CONNECT_NOTICES = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2107, "HMDS data farm connection is inactive but should be available upon demand.ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
#: Sent before the first historical answer of a connection (the farm woke up).
HMDS_OK = (2106, "HMDS data farm connection is OK:ushmds")
HMDS_BROKEN = (2105, "HMDS data farm connection is broken:ushmds")
CONNECTIVITY = {
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained. "
          "All data farms are connected: usfarm; ushmds; secdefnj.",
}
CLIENT_ID_IN_USE = (
    "Unable to connect as the client id is already in use. Retry with a unique client id.")
RATE_EXCEEDED = "Max rate of messages per second has been exceeded:max={} rec={} (543)"
PARSE_ERROR = "Error reading request:Message type -1.  Unable to parse data. {}"
#: A request the simulator does not serve (sent as 322, which every client library counts as
#: an error that ends the request, so nothing waits for an answer that never comes).
NOT_SERVED = "Error processing request:-'bX' : cause - Message type {} is not supported"

# ------------------------------------------------------------------ contracts
NO_SECURITY = "No security definition has been found for the request"
AMBIGUOUS = "The contract description specified for {} is ambiguous."

# ------------------------------------------------------------------ request validation (321 ...)
BAR_SIZE_INVALID = ("Error validating request.-'bK' : cause - Historical data bar size setting "
                    "is invalid. Legal ones are: " + LEGAL_BAR_SIZES)
DURATION_INVALID = "Error validating request.-'bK' : cause - Invalid duration format: '{}'"
DAYS_TOO_LONG = ("Error validating request.-'bH' : cause - Historical data requests for "
                 "durations longer than 365 days must be made in years.")
WHAT_INVALID = "Error validating request.-'bK' : cause - Invalid whatToShow: '{}'"
LIVE_WITH_END = "End date not supported with live updates"
ADJUSTED_WITH_END = "End date not supported with adjusted last"
CONTFUT_WITH_END = "Setting end date/time for continuous future security type is not allowed."
END_INVALID = (
    "End Date/Time: The date, time, or time-zone entered is invalid. The correct format is "
    "yyyymmdd hh:mm:ss xx/xxxx where yyyymmdd and xx/xxxx are optional. E.g.: "
    "20031126 15:59:00 US/Eastern  Note that there is a space between the date and time, and "
    "between the time and time-zone. You can also provide yyyymmddd-hh:mm:ss time is in UTC. "
    "Note that there is a dash between the date and time in UTC notation."
)
TOO_MANY_OPEN = (
    "Error processing request:-'bS' : cause - Only {} simultaneous API historical data "
    "requests allowed.")

# ------------------------------------------------------------------ historical service (162)
TOO_LONG = HMDS_PREFIX + "Time length exceed max."
NO_DATA = HMDS_PREFIX + "HMDS query returned no data: {}@{} {}"
#: TRADES on forex (ezibpy#24, ib_insync#316), as recorded.
NO_FOREX_TRADES = HMDS_PREFIX + "No historical market data for {}/CASH@FXSUBPIP Last 1d"
#: MIDPOINT (BID, ASK) on an index (ib-ruby#50): "{symbol}/IND@{exchange} {what} 0".
NO_INDEX_QUOTES = HMDS_PREFIX + "No historical market data for {}/IND@{} {} 0"
CANCELLED = HMDS_PREFIX + "API historical data query cancelled: {}"
FARM_DOWN = HMDS_PREFIX + "HMDS data farm connection is broken:ushmds"
NO_PERMISSION = HMDS_PREFIX + "No market data permissions for {} {}"
SERVER_ERROR = HMDS_PREFIX + "HMDS server error"
NOT_FOUND_366 = "No historical data query found for ticker id:{}"
#: The pacing-violation suffixes seen (the knob ``pacing_text`` picks one).
PACING_TEXTS = ("pacing violation", "Historical data request pacing violation",
                "Too many requests in the last 10 minutes.")
TICKS_ONE_END = ("Error validating request.-'bW' : cause - Exactly one of start and end "
                 "date/time must be given.")

#: How IB names what-to-show values inside its texts.
WHAT_WORDS = {"TRADES": "Trades", "MIDPOINT": "MidPoint", "BID": "Bid", "ASK": "Ask",
              "BID_ASK": "Bid_Ask", "ADJUSTED_LAST": "Adjusted_Last"}
