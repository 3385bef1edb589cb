"""The API's routers: ``data`` (bars and loads), ``operations``, ``ib`` (status, health,
symbols)."""
