"""numpy <-> Arrow without pandas.

``pa.array()``, ``Array.to_numpy()`` and ``pa.scalar()`` import pandas (0.2 s) on first use, even
for plain numpy data: the reader and the planner go through the buffers instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NUMPY_OF_ARROW = {pa.int8(): np.int8, pa.int16(): np.int16, pa.int32(): np.int32,
                   pa.int64(): np.int64, pa.uint8(): np.uint8, pa.uint16(): np.uint16,
                   pa.uint32(): np.uint32, pa.uint64(): np.uint64, pa.float32(): np.float32,
                   pa.float64(): np.float64}
_ARROW_OF_NUMPY = {np.dtype(v): k for k, v in _NUMPY_OF_ARROW.items()}


def numpy_of(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean Arrow array without nulls as numpy (a view when it can be)."""
    if isinstance(arr, pa.ChunkedArray):
        if arr.num_chunks == 1:
            return numpy_of(arr.chunk(0))
        if arr.num_chunks == 0:
            return numpy_of(pa.Array.from_buffers(arr.type, 0, [None, None]))
        return np.concatenate([numpy_of(c) for c in arr.chunks])
    if arr.null_count or not (arr.type in _NUMPY_OF_ARROW or pa.types.is_boolean(arr.type)):
        return arr.to_numpy(zero_copy_only=False)
    buf = arr.buffers()[1]
    if pa.types.is_boolean(arr.type):
        if not len(arr):
            return np.zeros(0, dtype=bool)
        bits = np.frombuffer(buf, np.uint8, count=(arr.offset + len(arr) + 7) // 8)
        return np.unpackbits(bits, count=arr.offset + len(arr),
                             bitorder="little")[arr.offset:].view(bool)
    dtype = np.dtype(_NUMPY_OF_ARROW[arr.type])
    if buf is None or not len(arr):
        return np.zeros(0, dtype=dtype)
    return np.frombuffer(buf, dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def arrow_of(values: np.ndarray, type: pa.DataType | None = None) -> pa.Array:
    """A numeric or boolean numpy array as Arrow (zero-copy for numbers), cast to ``type``."""
    values = np.ascontiguousarray(values)
    if values.dtype == bool:
        out = pa.Array.from_buffers(pa.bool_(), len(values), [
            None, pa.py_buffer(np.packbits(values, bitorder="little"))])
    elif values.dtype in _ARROW_OF_NUMPY:
        out = pa.Array.from_buffers(_ARROW_OF_NUMPY[values.dtype], len(values),
                                    [None, pa.py_buffer(values)])
    else:
        return pa.array(values, type)
    return out if type is None or out.type == type else out.cast(type)


def strings_of(values: Sequence[str | None]) -> pa.Array:
    """A string array from a (short) list of str (None: null)."""
    data = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int32)
    np.cumsum([len(d) for d in data], out=offsets[1:])
    valid = np.array([v is not None for v in values], dtype=bool)
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), len(data), [
        bitmap, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])


def searchsorted(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(table, x)``, with many keys sorted first: in order, the binary searches
    walk the table instead of missing the cache at every step (400k keys in 10M: 4x faster)."""
    if len(x) < 1 << 12:
        return np.searchsorted(table, x)
    order = np.argsort(x)
    out = np.empty(len(x), dtype=np.int64)
    out[order] = np.searchsorted(table, x[order])
    return out


def index_in(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The index in ``table`` (distinct values) of each of ``x`` (any shape), -1 where absent:
    Arrow's hash lookup, one pass over ``x`` (2.4M keys in 360k: 0.07 s against 0.16 s for
    binary searches, which must sort the keys first)."""
    found = pc.index_in(arrow_of(x.ravel()), value_set=arrow_of(table))
    index = np.frombuffer(found.buffers()[1], np.int32, count=len(found),
                          offset=found.offset * 4).astype(np.int64)
    if found.null_count:
        index[~numpy_of(found.is_valid())] = -1
    return index.reshape(x.shape)


def stable_order(key: np.ndarray, n_keys: int) -> np.ndarray:
    """``np.argsort(key, kind="stable")`` for integer keys in ``[0, n_keys)``: numpy sorts 16-bit
    keys by radix, so keys below 2**32 take two such passes (4.6M keys: 0.08 s against 0.3 s for
    a sort of the keys themselves)."""
    if n_keys <= 1 << 16:
        return np.argsort(key.astype(np.uint16), kind="stable")
    if n_keys > 1 << 32:
        return np.argsort(key, kind="stable")
    low = np.argsort(key.astype(np.uint16), kind="stable")
    high = key[low]
    high >>= 16
    return low[np.argsort(high.astype(np.uint16), kind="stable")]


def kept(values: np.ndarray, keep: pa.Array) -> np.ndarray:
    """``values[keep]`` (``keep``: a boolean Arrow array, :func:`arrow_of` of a mask) by
    Arrow's filter: 2-3 times faster than numpy's boolean indexing on millions of rows."""
    return numpy_of(pc.filter(arrow_of(values), keep))


def both(fn: Callable[..., Any], args: list[tuple],
          pool: ThreadPoolExecutor | None = None) -> list[Any]:
    """[``fn(*args[0])``, ``fn(*args[1])``], the second on ``pool`` (or a thread of its own)
    while the first runs here: Arrow's and numpy's kernels release the GIL."""
    if pool is None:
        with ThreadPoolExecutor(1) as own:
            return both(fn, args, own)
    later = pool.submit(fn, *args[1])
    first = fn(*args[0])
    return [first, later.result()]
