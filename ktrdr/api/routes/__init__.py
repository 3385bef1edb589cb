"""The API's routers: ``data`` (bars and loads), ``operations``, ``ib`` (health, status,
symbols). Each takes what it needs from ``ktrdr.api.dependencies`` (never from the app)."""
