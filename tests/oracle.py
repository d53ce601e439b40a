"""A numpy oracle for attention patterns, written with plain loops.

It walks a pattern's structure and decides each (example, query, key) cell
from the definitions in the issue, independently of `keras_dynmask.core.masks`.
"""

import numpy as np

from keras_dynmask.core import patterns


def _at(value, b):
    """Example `b`'s value of a scalar or per-example parameter."""
    value = np.asarray(value)
    return int(value) if value.ndim == 0 else int(value[b])


def visible(pattern, b, i, j, position, inputs):
    """Whether query `i` (absolute `position`) of example `b` sees key `j`."""
    if isinstance(pattern, patterns.Causal):
        return j <= position
    if isinstance(pattern, patterns.Backward):
        return j >= position
    if isinstance(pattern, patterns.Bidirectional):
        return True
    if isinstance(pattern, patterns.Window):
        return position - pattern.left <= j <= position + pattern.right
    if isinstance(pattern, patterns.Prefix):
        length = pattern.length
        if length is None:
            length = _at(inputs["prefix_length"], b)
        return j < length
    if isinstance(pattern, patterns.Segment):
        queries = inputs["segment_ids"]
        keys = inputs.get("key_segment_ids")
        keys = queries if keys is None else keys
        return queries[b][i] == keys[b][j]
    if isinstance(pattern, patterns.Span):
        length, start = pattern.length, pattern.position
        if length is None:
            length = _at(inputs["span_length"], b)
            start = _at(inputs["span_position"], b)
        size = inputs["_key_length"]
        start = min(max(int(start), 0), size)
        length = min(max(int(length), 0), size)
        return start <= j < start + length
    if isinstance(pattern, patterns.And):
        return all(
            visible(p, b, i, j, position, inputs) for p in pattern.patterns
        )
    if isinstance(pattern, patterns.Or):
        return any(
            visible(p, b, i, j, position, inputs) for p in pattern.patterns
        )
    if isinstance(pattern, patterns.Not):
        return not visible(pattern.pattern, b, i, j, position, inputs)
    raise TypeError(f"no oracle for {pattern!r}")


def oracle_mask(
    pattern, query_length, key_length=None, offset=0, batch=1, **inputs
):
    """The `(batch, T, S)` boolean mask the pattern should give."""
    key_length = query_length if key_length is None else key_length
    offsets = np.broadcast_to(np.asarray(offset), (batch,))
    inputs = {**inputs, "_key_length": key_length}
    out = np.zeros((batch, query_length, key_length), bool)
    for b in range(batch):
        for i in range(query_length):
            for j in range(key_length):
                out[b, i, j] = visible(
                    pattern, b, i, j, int(offsets[b]) + i, inputs
                )
    return out
