"""A numpy oracle for attention patterns, written with plain loops.

It walks a pattern's structure and decides each (example, query, key) cell
from the definitions in the issue, independently of `keras_dynmask.core.masks`.
"""

import math

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


def t5_bucket(distance, num_buckets, max_distance, bidirectional):
    """T5's reference rule, one distance (key minus query) at a time."""
    bucket, n = 0, -distance
    if bidirectional:
        num_buckets //= 2
        bucket += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return bucket + n
    large = exact + int(
        math.log(n / exact)
        / math.log(max_distance / exact)
        * (num_buckets - exact)
    )
    return bucket + min(large, num_buckets - 1)


def modified_scores(modifiers, scores, queries, keys, variables=None):
    """numpy float64 `(B, N, T, S)`: `modifiers` applied in order to
    `scores`, from their definitions, with queries at `queries` (`(T,)`
    or `(B, T)`) and keys at `keys` (`(S,)`)."""
    from keras import ops

    from keras_dynmask.core import scores as score_classes

    out = np.asarray(scores, "float64")
    heads = out.shape[1]
    query = np.broadcast_to(np.asarray(queries), (out.shape[0], out.shape[2]))
    distance = np.asarray(keys)[None, None, :] - query[:, :, None]  # (B,T,S)
    for modifier in modifiers:
        if isinstance(modifier, score_classes.ALiBi):
            # The slopes' rule has a test of its own (test_scores).
            slopes = modifier.slopes or score_classes.alibi_slopes(heads)
            slopes = np.asarray(slopes)[None, :, None, None]
            out = out - slopes * np.abs(distance)[:, None]
        elif isinstance(modifier, score_classes.SoftCap):
            out = modifier.cap * np.tanh(out / modifier.cap)
        elif isinstance(modifier, score_classes.RelativeBias):
            table = np.asarray(variables[modifier.weight_name], "float64")
            buckets = np.vectorize(
                lambda d, m=modifier: t5_bucket(
                    d, m.num_buckets, m.max_distance, m.bidirectional
                )
            )(distance)
            out = out + np.moveaxis(table[buckets], -1, 1)
        else:  # a user's function: its own definition, on float64 numpy
            b, n = np.meshgrid(*map(np.arange, out.shape[:2]), indexing="ij")
            b, n = b[:, :, None, None], n[:, :, None, None]
            arguments = (out, b, n, query[:, None, :, None], keys)
            value = modifier.function(
                *(
                    ops.convert_to_tensor(np.asarray(a, "float64"))
                    for a in arguments
                )
            )
            out = np.asarray(ops.convert_to_numpy(value), "float64")
    return out
