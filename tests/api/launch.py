"""Run the API server like ``ktrdr api``, with farm settings the environment cannot express.

``python -m tests.api.launch --port N [--no-retry]``: ``--no-retry`` gives the farm a retry
policy of one attempt, so an IB error such as a pacing violation reaches the API at once
instead of after the farm's back-off.
"""

from __future__ import annotations

import argparse

from ibfarm.config import FarmConfig
from ktrdr.api.serve import serve
from ktrdr.api.settings import ApiSettings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-retry", action="store_true")
    args = parser.parse_args()
    farm = FarmConfig.from_env()
    if args.no_retry and hasattr(farm, "retry"):
        from ibfarm.config import RetryPolicy

        farm = farm.replace(retry=RetryPolicy(max_attempts=1))
    settings = ApiSettings.from_env(port=args.port, farm=farm)
    serve(port=args.port, log_level=args.log_level, settings=settings)


if __name__ == "__main__":
    main()
