"""Pure mask functions: boolean tensors, `True` = visible.

A token mask `(B, T)` says which tokens exist or are kept
(`padding_mask`, `length_mask`, `span_token_mask`). An attention mask
`(B, T, S)` (or `(1, T, S)`) says which keys each query sees: query `i` may
see key `j` where it is `True` (every other function here). A span has both
forms, so both names say which: `span_token_mask`, `span_attention_mask`.
Each docstring's first words say which kind it returns. A query `i` stands at
absolute position `offset + i` and key `j` at position `j`, so with a cache
of `S` keys and `T` new queries, `offset = S - T` makes causal decoding
right. Where every parameter is a scalar the batch axis is 1 and broadcasts.

Lengths, offsets and parameters may be Python ints, scalar tensors,
variables or per-example `(B,)` tensors; nothing is fixed at trace time, so
the same graph serves every sequence length.

Example: a causal mask for a padded batch.

>>> import numpy as np, keras_dynmask as kd
>>> padding = kd.padding_mask(np.array([[5, 6, 0]]))
>>> kd.merge_masks(kd.causal_mask(3), padding, padding).numpy().astype(int)
array([[[1, 0, 0],
        [1, 1, 0],
        [0, 0, 0]]])
"""

from keras import ops

from keras_dynmask.core._checks import check_int
from keras_dynmask.core._checks import check_integer_tensor
from keras_dynmask.core._checks import is_python_int


def padding_mask(token_ids, pad_id=0):
    """Token mask `(B, T)`: the positions of `token_ids` that are not padding.

    Args:
        token_ids: int tensor `(B, T)`.
        pad_id: int. The padding id. Defaults to `0`.

    Returns:
        bool `(B, T)`: `True` where `token_ids != pad_id`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.padding_mask([[5, 6, 1, 1]], pad_id=1).numpy()
    array([[ True,  True, False, False]])
    """
    pad_id = check_int("pad_id", pad_id)
    token_ids = check_integer_tensor("token_ids", token_ids, ranks=(2,))
    return ops.not_equal(token_ids, pad_id)


def length_mask(lengths, max_length):
    """Token mask `(B, T)`: the first `lengths[b]` positions of each row.

    For continuous inputs (audio frames, images patches) where no id marks
    padding. Lengths beyond `max_length` are clipped; negative ones give an
    empty row.

    Args:
        lengths: int tensor `(B,)`.
        max_length: int or scalar tensor. `T`.

    Returns:
        bool `(B, T)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.length_mask([1, 3], max_length=4).numpy()
    array([[ True, False, False, False],
           [ True,  True,  True, False]])
    """
    lengths = check_integer_tensor("lengths", lengths, ranks=(1,))
    positions = ops.arange(max_length, dtype="int32")
    return ops.less(ops.expand_dims(positions, 0), ops.expand_dims(lengths, 1))


def span_token_mask(length, position, sequence_length):
    """Token mask `(B, T)`: the span `position <= j < position + length`.

    The token mask behind a dynamic span mask `Mask(x, length, position)`
    (see `SpanTokenMask`). `length` and `position` are clipped to `[0, T]`, so
    out-of-range values never fail at run time.

    Args:
        length: int, variable or int tensor `(B,)`. Span length `LEN`.
        position: int, variable or int tensor `(B,)`. First position `POS`.
        sequence_length: int or scalar tensor. `T`.

    Returns:
        bool `(B, T)` (`B` is 1 when both parameters are scalars).

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.span_token_mask(2, 1, sequence_length=5).numpy()
    array([[False,  True,  True, False, False]])
    """
    positions = ops.expand_dims(ops.arange(sequence_length, dtype="int32"), 0)
    return _in_span(length, position, positions, sequence_length)


def causal_mask(query_length, key_length=None, offset=0):
    """Attention mask, forward (causal): query `i` sees key `j` iff `j <= i`.

    Args:
        query_length: int or scalar tensor. `T`.
        key_length: int or scalar tensor. `S`. Defaults to `T`.
        offset: int or int tensor `(B,)`. Absolute position of query 0.
            Defaults to `0`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.causal_mask(3).numpy().astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]]])
    """
    query, key = _grid(query_length, key_length, offset)
    return ops.less_equal(key, query)


def backward_mask(query_length, key_length=None, offset=0):
    """Attention mask, backward: query `i` sees key `j` iff `j >= i`.

    Args and shapes as in `causal_mask`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.backward_mask(3).numpy().astype(int)
    array([[[1, 1, 1],
            [0, 1, 1],
            [0, 0, 1]]])
    """
    query, key = _grid(query_length, key_length, offset)
    return ops.greater_equal(key, query)


def bidirectional_mask(query_length, key_length=None, offset=0):
    """Attention mask, bidirectional: every query sees every key.

    Args and shapes as in `causal_mask`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.bidirectional_mask(2, 3).numpy().astype(int)
    array([[[1, 1, 1],
            [1, 1, 1]]])
    """
    query, key = _grid(query_length, key_length, offset)
    return ops.logical_and(_every(query), _every(key))


def window_mask(left, right=None, *, query_length, key_length=None, offset=0):
    """Attention mask, window: query `i` sees key `j` iff
    `i - left <= j <= i + right`.

    Counts include the query itself: `window_mask(0, 0)` is the diagonal.
    Keras' `sliding_window=W` is `window_mask(W - 1, W - 1)`; a causal
    window of `W` keys including self is `causal & window(W - 1)`.

    Args:
        left: int, variable or int tensor `(B,)`. Keys before the query.
        right: same. Keys after the query. Defaults to `left`.
        query_length: int or scalar tensor. `T`.
        key_length: int or scalar tensor. `S`. Defaults to `T`.
        offset: int or int tensor `(B,)`. Defaults to `0`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.window_mask(1, 0, query_length=3).numpy().astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [0, 1, 1]]])
    """
    right = left if right is None else right
    left = _parameter("left", left)
    right = _parameter("right", right)
    query, key = _grid(query_length, key_length, offset)
    return ops.logical_and(
        ops.greater_equal(key, query - left), ops.less_equal(key, query + right)
    )


def prefix_mask(prefix_length, query_length, key_length=None, offset=0):
    """Attention mask, prefix: every query sees key `j` iff
    `j < prefix_length`.

    The prefix-LM mask is `causal | prefix`.

    Args:
        prefix_length: int, variable or int tensor `(B,)`. `P`.
        query_length: int or scalar tensor. `T`.
        key_length: int or scalar tensor. `S`. Defaults to `T`.
        offset: int or int tensor `(B,)`. Defaults to `0`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> m = keras_dynmask.prefix_mask(np.array([1, 2]), query_length=3)
    >>> m.numpy().astype(int)[:, 0]
    array([[1, 0, 0],
           [1, 1, 0]])
    """
    prefix_length = _parameter("prefix_length", prefix_length)
    query, key = _grid(query_length, key_length, offset)
    return ops.logical_and(ops.less(key, prefix_length), _every(query))


def span_attention_mask(
    length, position, query_length, key_length=None, offset=0
):
    """Attention mask, span: every query sees key `j` iff
    `POS <= j < POS + LEN`.

    Out-of-range `length` and `position` are clipped to `[0, S]`.

    Args:
        length: int, variable or int tensor `(B,)`. `LEN`.
        position: int, variable or int tensor `(B,)`. `POS`.
        query_length: int or scalar tensor. `T`.
        key_length: int or scalar tensor. `S`. Defaults to `T`.
        offset: int or int tensor `(B,)`. Defaults to `0`.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> m = keras_dynmask.span_attention_mask(2, 1, query_length=2,
    ...                                       key_length=4)
    >>> m.numpy()
    array([[[False,  True,  True, False],
            [False,  True,  True, False]]])
    """
    key_length = query_length if key_length is None else key_length
    query, key = _grid(query_length, key_length, offset)
    in_span = _in_span(length, position, ops.reshape(key, (1, -1)), key_length)
    return ops.logical_and(ops.expand_dims(in_span, 1), _every(query))


def segment_mask(segment_ids, key_segment_ids=None):
    """Attention mask, segment: query `i` sees key `j` iff their segment ids
    match.

    For packed sequences: several documents in one row, none seeing another.

    Args:
        segment_ids: int tensor `(B, T)`. Segment of each query.
        key_segment_ids: int tensor `(B, S)`. Segment of each key. Defaults
            to `segment_ids` (self-attention).

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.segment_mask([[0, 0, 1]]).numpy().astype(int)
    array([[[1, 1, 0],
            [1, 1, 0],
            [0, 0, 1]]])
    """
    segment_ids = check_integer_tensor("segment_ids", segment_ids, ranks=(2,))
    if key_segment_ids is None:
        key_segment_ids = segment_ids
    key_segment_ids = check_integer_tensor(
        "key_segment_ids", key_segment_ids, ranks=(2,)
    )
    return ops.equal(
        ops.expand_dims(segment_ids, 2), ops.expand_dims(key_segment_ids, 1)
    )


def merge_masks(attention_mask=None, query_mask=None, key_mask=None):
    """Attention mask: a pattern's `(B, T, S)` mask ANDed with `(B, T)` and
    `(B, S)` token masks.

    Args:
        attention_mask: bool `(B, T, S)` or `None`.
        query_mask: bool `(B, T)` or `None`. Padding of the queries.
        key_mask: bool `(B, S)` or `None`. Padding of the keys.

    Returns:
        bool `(B, T, S)`, or `None` when every argument is `None`.

    Example:

    >>> import numpy as np, keras_dynmask
    >>> padding = np.array([[True, True, False]])
    >>> m = keras_dynmask.merge_masks(keras_dynmask.causal_mask(3), padding,
    ...                               padding)
    >>> m.numpy().astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [0, 0, 0]]])
    """
    mask = attention_mask
    if query_mask is not None:
        mask = _and(mask, ops.expand_dims(ops.cast(query_mask, "bool"), 2))
    if key_mask is not None:
        mask = _and(mask, ops.expand_dims(ops.cast(key_mask, "bool"), 1))
    return mask


def _and(mask, other):
    return other if mask is None else ops.logical_and(mask, other)


def _every(positions):
    """All-`True` mask shaped like `positions`; broadcasts a rule over them."""
    return ops.ones_like(positions, dtype="bool")


def _parameter(name, value):
    """A pattern parameter as an int32 tensor shaped `(B|1, 1, 1)`."""
    if is_python_int(value):
        check_int(name, value, minimum=0)
    value = check_integer_tensor(name, value, ranks=(0, 1))
    return ops.reshape(value, (-1, 1, 1))


def _grid(query_length, key_length, offset):
    """Query positions `(B|1, T, 1)` and key positions `(1, 1, S)`."""
    key_length = query_length if key_length is None else key_length
    offset = check_integer_tensor("offset", offset, ranks=(0, 1))
    query = ops.expand_dims(ops.arange(query_length, dtype="int32"), 0)
    query = query + ops.reshape(offset, (-1, 1))
    key = ops.arange(key_length, dtype="int32")
    return ops.expand_dims(query, 2), ops.reshape(key, (1, 1, -1))


def _in_span(length, position, positions, sequence_length):
    """`position <= positions < position + length`, clipped to `[0, T]`."""
    length = ops.reshape(_parameter("length", length), (-1, 1))
    position = ops.reshape(_parameter("position", position), (-1, 1))
    limit = ops.cast(sequence_length, "int32")
    # Clipping first keeps `position + length` from overflowing int32.
    position = ops.clip(position, 0, limit)
    end = position + ops.clip(length, 0, limit)
    return ops.logical_and(
        ops.greater_equal(positions, position), ops.less(positions, end)
    )
