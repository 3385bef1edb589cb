"""ktrdr's HTTP API (FastAPI): stored bars, background loads and backfills, IB's state.

One request to backfill, end to end (every name is this package's or the data layer's)::

    POST /api/v1/data/backfill {"symbols": [...], "timeframe": "1h", "start": ...}
      │  app.py: require_token (dependencies.py), then routes/data.py: backfill()
      │  Availability.require(maintenance_ok=True): 503 when the gateway is unreachable
      ▼
    OperationRegistry.start() (operations.py) ──► 202 + Location: /api/v1/operations/<id>
      │  an asyncio task on the server's loop: loads.backfill(manager, ctx, locks, body)
      │  KeyLocks.hold((symbol, timeframe), ...): one operation per file at a time
      ▼
    DataManager.backfill_async(symbols, tf, start, end, progress=ProgressSink)  (ktrdr.data)
      │  stored bars and gaps; missing ranges ─► provider.plan_requests ─► one task per request
      ▼
    IbDataAdapter.fetch_historical_data ─► IbFarm.historical_bars (FarmFuture per segment)
      │  the farm queues and paces them, sends them over its workers' connections to IB
      ▼
    bars land ─► DataManager saves them (Parquet, on threads) ─► ProgressEvent ─► ctx.progress
      ▼
    LoadResult (one SymbolReport per symbol) ─► GET /api/v1/operations/<id>

    DELETE /api/v1/operations/<id> ─► the task is cancelled ─► DataManager cancels its
        FarmFutures (queued ones leave the farm's queue, sent ones are cancelled at IB),
        saves what landed, re-raises ─► the task ends, the locks are released

Beside it: ``GET /data/{symbol}/{timeframe}`` (the store only), ``/symbols/{symbol}`` (the
adapter), ``/health`` and ``/ib/status`` (``availability.py``: ok, maintenance,
unreachable; the adapter's ``farm_status()``), ``/metrics`` (``metrics.py``). Errors are
problems (``errors.py``). ``ktrdr api`` serves it (``serve.py``).
"""
