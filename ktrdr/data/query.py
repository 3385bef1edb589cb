"""SQL over a stored dataset, with DuckDB (``ktrdr data query "SQL"``).

::

  BarStore(data_dir, source).root ── pyarrow.dataset (Hive partitioning: timeframe, symbol
        │                             as strings; any filesystem the store uses, S3 included)
        ▼
  DuckDB view ``bars``: timestamp (TIMESTAMPTZ), open, high, low, close, volume, wap,
        │               bar_count, timeframe, symbol      (filters on the partition columns
        ▼                                                   skip the other folders)
  the result as an Arrow table

DuckDB scans the pyarrow dataset directly, so the same query works on a local folder and on
object storage without DuckDB's own S3 extension. DuckDB is optional: ``pip install
'ibfarm[query]'``.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.dataset as ds

from ktrdr.data.dataset import SCHEMA
from ktrdr.data.store import BarStore, StoreError

log = logging.getLogger(__name__)

#: The view the SQL sees.
VIEW = "bars"
#: The dataset's partition columns, always strings ("700@SEHK", "1d").
PARTITIONING = ds.partitioning(pa.schema([("timeframe", pa.string()), ("symbol", pa.string())]),
                               flavor="hive")


class QueryError(StoreError, ValueError):
    """The SQL failed (DuckDB's message), or DuckDB is not installed."""


def bar_dataset(store: BarStore) -> ds.Dataset:
    """The store's dataset as a ``pyarrow.dataset`` (hidden and temporary files skipped)."""
    root = store.location.join(f"source={store.source}")
    schema = pa.schema([*SCHEMA, *PARTITIONING.schema])
    try:
        return ds.dataset(root, filesystem=store.location.fs, format="parquet",
                          partitioning=PARTITIONING, schema=schema,
                          exclude_invalid_files=False)
    except FileNotFoundError:
        return ds.dataset([], schema=schema, format="parquet")


def run_query(store: BarStore, sql: str) -> pa.Table:
    """The result of ``sql`` over the view ``bars`` of ``store``'s dataset.

    Raises:
        QueryError: DuckDB is missing, or rejected the SQL (its message).
    """
    try:
        import duckdb
    except ImportError:
        raise QueryError("ktrdr data query needs DuckDB: pip install 'ibfarm[query]' (or "
                         "pip install duckdb)") from None
    dataset = bar_dataset(store)
    con = duckdb.connect()
    try:
        con.register(VIEW, dataset)
        try:
            relation = con.sql(sql)
            if relation is None:  # a statement without a result
                return pa.table({})
            fetch = getattr(relation, "to_arrow_table", None) or relation.arrow  # DuckDB 2, 1
            result = fetch()
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {exc}") from None
        return result if isinstance(result, pa.Table) else result.read_all()
    finally:
        con.close()


__all__ = ["PARTITIONING", "VIEW", "QueryError", "bar_dataset", "run_query"]
