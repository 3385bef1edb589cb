"""A minimal Arrow IPC stream writer for flat tables of 8-byte columns, without pyarrow.

Workers send bars as Arrow IPC stream bytes. Importing pyarrow costs a worker process about
45 MB of resident memory and a tenth of a second, so the worker writes the stream itself: the
schema message comes ready-made from the manager (``pyarrow.Schema.serialize()``), and this
module writes the record batch message (a small flatbuffer) and the column buffers.

Layout of one encapsulated record batch message (Arrow columnar format, metadata version V5)::

    0xFFFFFFFF | int32 metadata size | Message flatbuffer (padded to 8) | body
    body = for each column: validity buffer (empty: no nulls) + data buffer (n * 8 bytes)

The flatbuffer is laid out front to back with fixed offsets (see ``_metadata``); every int64
sits on an 8-byte boundary and every vector of structs starts on one, as the verifier expects.
The manager reads the bytes with ``pyarrow.ipc.open_stream`` without copying them.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence

CONTINUATION = b"\xff\xff\xff\xff"
END_OF_STREAM = CONTINUATION + b"\x00\x00\x00\x00"

_METADATA_V5 = 4
_HEADER_RECORD_BATCH = 3

# Front-to-back positions inside the Message flatbuffer (all relative to its start).
_MSG_VTABLE = 4  # 12 bytes: vtable size, table size, 4 field offsets
_MSG_TABLE = 16  # soffset, header uoffset, bodyLength, version, header_type (20 bytes)
_RB_VTABLE = 36  # 10 bytes: vtable size, table size, 3 field offsets
_RB_TABLE = 48  # soffset, nodes uoffset, length, buffers uoffset (20 bytes)
_NODES = 68  # u32 count, then 16-byte FieldNode structs from 72 (8-aligned)


def _metadata(num_rows: int, num_columns: int, column_bytes: int) -> bytes:
    """The Message flatbuffer of a record batch of ``num_columns`` columns without nulls."""
    nodes_end = _NODES + 4 + 16 * num_columns
    buffers_at = nodes_end + 4 if nodes_end % 8 == 0 else nodes_end  # count at 8k+4
    end = buffers_at + 4 + 16 * 2 * num_columns
    buf = bytearray(end + (-end) % 8)
    struct.pack_into("<I", buf, 0, _MSG_TABLE)  # root table
    struct.pack_into("<6H", buf, _MSG_VTABLE, 12, 20, 16, 18, 4, 8)
    struct.pack_into(
        "<iIqhB", buf, _MSG_TABLE,
        _MSG_TABLE - _MSG_VTABLE,  # soffset to the vtable
        _RB_TABLE - (_MSG_TABLE + 4),  # header -> RecordBatch table
        num_columns * column_bytes,  # bodyLength
        _METADATA_V5,
        _HEADER_RECORD_BATCH,
    )
    struct.pack_into("<5H", buf, _RB_VTABLE, 10, 20, 8, 4, 16)
    struct.pack_into(
        "<iIqI", buf, _RB_TABLE,
        _RB_TABLE - _RB_VTABLE,
        _NODES - (_RB_TABLE + 4),  # nodes vector
        num_rows,
        buffers_at - (_RB_TABLE + 16),  # buffers vector
    )
    struct.pack_into("<I", buf, _NODES, num_columns)
    for i in range(num_columns):
        struct.pack_into("<qq", buf, _NODES + 4 + 16 * i, num_rows, 0)
    struct.pack_into("<I", buf, buffers_at, 2 * num_columns)
    for i in range(num_columns):
        offset = i * column_bytes
        struct.pack_into("<qqqq", buf, buffers_at + 4 + 32 * i, offset, 0, offset, column_bytes)
    return bytes(buf)


def record_batch_message(columns: Sequence[array], num_rows: int) -> list[bytes]:
    """The encapsulated record batch message for ``columns``, as byte chunks to write in order.

    Args:
        columns: one ``array('q')`` or ``array('d')`` per schema field, in schema order, each
            ``num_rows`` long (no nulls).
        num_rows: rows in the batch.
    """
    for column in columns:
        if column.itemsize != 8 or len(column) != num_rows:
            raise ValueError("every column must hold num_rows 8-byte values")
    metadata = _metadata(num_rows, len(columns), num_rows * 8)
    chunks = [CONTINUATION, struct.pack("<i", len(metadata)), metadata]
    chunks.extend(column.tobytes() for column in columns)
    return chunks


def stream(schema_message: bytes, columns: Sequence[array], num_rows: int) -> bytes:
    """A whole IPC stream: the schema message, one record batch, end of stream."""
    return b"".join([schema_message, *record_batch_message(columns, num_rows), END_OF_STREAM])
