"""``make demo``: start the simulated gateway and fetch bars for a few symbols with ib_insync."""

from __future__ import annotations

import logging

from ib_insync import IB, Forex, Stock, util

from ibfarm.sim import SimGateway

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with SimGateway() as gw:
        ib = IB()
        ib.connect("127.0.0.1", gw.port, clientId=1, readonly=True, timeout=10)
        try:
            for contract, what in ((Stock("AAPL", "SMART", "USD"), "TRADES"),
                                   (Stock("MSFT", "SMART", "USD"), "TRADES"),
                                   (Forex("EURUSD"), "MIDPOINT")):
                bars = ib.reqHistoricalData(contract, "", "5 D", "1 hour", what, True, 2)
                frame = util.df(bars)
                print(f"\n{contract.symbol} {what}: {len(bars)} hourly bars")  # noqa: T201
                print(frame.tail(5).to_string(index=False))  # noqa: T201
        finally:
            ib.disconnect()
        print("\ngateway stats:", gw.stats())  # noqa: T201


if __name__ == "__main__":
    main()
