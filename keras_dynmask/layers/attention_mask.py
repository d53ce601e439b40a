"""The `(B, T, S)` attention mask of one call: pattern & query & key masks."""

import keras
from keras import ops

from keras_dynmask.core import masks
from keras_dynmask.core import patterns
from keras_dynmask.core.parsing import as_pattern

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


def pattern_variables(layer, pattern):
    """Non-trainable variables holding the pattern's int parameters.

    A callback may assign them during `model.fit` (a window that widens, a
    span that moves) without retracing; saved models keep their values and
    exported graphs read them. Each is named after its word, not its place
    in the pattern (`Pattern.variable_names`): `window(2)` gives
    `window_2_left` and `window_2_right`, `window(2, name=local)` gives
    `local_left` and `local_right`; equal words share one variable.

    Returns:
        `{name: variable}`, created in sorted name order.

    Raises:
        ValueError: when two different words would share a name.
    """
    values, owners = {}, {}
    for leaf in pattern.leaves():
        for key, name in leaf.variable_names().items():
            if name in owners and owners[name] != leaf:
                raise ValueError(
                    f"Two words of pattern '{pattern}' would hold their "
                    f"parameters in one variable {name!r}: "
                    f"'{owners[name]}' and '{leaf}'; give them different "
                    "names"
                )
            owners[name] = leaf
            values[name] = leaf.parameters()[key]
    return {
        name: layer.add_weight(
            shape=(),
            dtype="int32",
            initializer=keras.initializers.Constant(values[name]),
            trainable=False,
            name=name,
        )
        for name in sorted(values)
    }


def call_attention_mask(
    pattern,
    query,
    key,
    query_mask=None,
    key_mask=None,
    offset=0,
    variables=None,
    **inputs,
):
    """The mask one attention call needs, built from this batch's tensors.

    Args:
        pattern: a `Pattern`.
        query: tensor `(B, T, ...)`.
        key: tensor `(B, S, ...)`.
        query_mask: bool `(B, T)` or `None`.
        key_mask: bool `(B, S)` or `None`.
        offset: int or int tensor `(B,)`. Absolute position of query 0.
        variables: `{name: variable}` from `pattern_variables`, or `None`.
        **inputs: per-example pattern inputs; `None` values are ignored.

    Returns:
        bool `(B|1, T, S)`, or `None` when nothing is masked at all.
    """
    inputs = {
        name: value for name, value in inputs.items() if value is not None
    }
    _check_lengths(inputs.get("segment_ids"), "segment_ids", query, "query")
    _check_lengths(inputs.get("key_segment_ids"), "key_segment_ids", key, "key")
    pattern_mask = None
    if not isinstance(pattern, patterns.Bidirectional):
        pattern_mask = pattern.mask(
            ops.shape(query)[1],
            ops.shape(key)[1],
            offset,
            variables=variables,
            **inputs,
        )
    return masks.merge_masks(pattern_mask, query_mask, key_mask)


def _check_lengths(ids, name, tensor, role):
    """Segment ids need one id per position; static lengths must agree."""
    if ids is None or len(ids.shape) != 2:
        return
    if None not in (ids.shape[1], tensor.shape[1]):
        if ids.shape[1] != tensor.shape[1]:
            raise ValueError(
                f"{name} must have one id per {role} position: {name} has "
                f"shape {tuple(ids.shape)}, the {role} {tuple(tensor.shape)}"
            )


@_register
class AttentionMask(keras.layers.Layer):
    """Builds a `(B, T, S)` attention mask from a pattern and token masks.

    For users of stock `keras.layers.MultiHeadAttention(attention_mask=...)`:
    the mask is rebuilt for every batch's own lengths, padding and
    per-example inputs.

    Masking: reads the propagated masks of `query` and `key` (padding);
    its output carries no mask.

    The pattern's int parameters (window sizes, fixed spans and prefixes)
    live in the non-trainable variables of `pattern_variables` (named after
    their word, like `"window_3_left"`), which a callback may change during
    training.

    Args:
        pattern: `Pattern` or pattern text, e.g. `"causal & window(3)"`.
            Defaults to `"bidirectional"`.
        **kwargs: base layer arguments.

    Call arguments:
        query: tensor `(B, T, ...)`.
        key: tensor `(B, S, ...)`. Defaults to `query` (self-attention).
        segment_ids, key_segment_ids, prefix_length, span_length,
            span_position: per-example inputs the pattern reads.
        offset: int or int tensor `(B,)`. Absolute position of query 0.

    Returns:
        bool `(B, T, S)`.

    Example:

    >>> import numpy as np, keras, keras_dynmask
    >>> ids = np.array([[3, 4, 0]])
    >>> x = keras.layers.Embedding(5, 2, mask_zero=True)(ids)
    >>> m = keras_dynmask.AttentionMask("causal")(x)
    >>> m.numpy().astype(int)
    array([[[1, 0, 0],
            [1, 1, 0],
            [0, 0, 0]]])
    """

    def __init__(self, pattern="bidirectional", **kwargs):
        super().__init__(**kwargs)
        self.pattern = as_pattern(pattern)
        self.pattern_variables = pattern_variables(self, self.pattern)

    def call(
        self,
        query,
        key=None,
        segment_ids=None,
        key_segment_ids=None,
        prefix_length=None,
        span_length=None,
        span_position=None,
        offset=0,
        mask=None,
        query_mask=None,
        key_mask=None,
    ):
        # Keras fills `mask` for a lone `query` and `query_mask`/`key_mask`
        # when the layer gets several tensors.
        if query_mask is None:
            query_mask = mask
        if key is None:
            key, key_mask = query, query_mask
        result = call_attention_mask(
            self.pattern,
            query,
            key,
            query_mask,
            key_mask,
            offset,
            variables=self.pattern_variables,
            segment_ids=segment_ids,
            key_segment_ids=key_segment_ids,
            prefix_length=prefix_length,
            span_length=span_length,
            span_position=span_position,
        )
        shape = (ops.shape(query)[0], ops.shape(query)[1], ops.shape(key)[1])
        if result is None:
            return ops.ones(shape, dtype="bool")
        return ops.broadcast_to(result, shape)

    def compute_mask(self, *args, **kwargs):
        return None

    def compute_output_spec(self, query, key=None, **kwargs):
        key = query if key is None else key
        return keras.KerasTensor(
            (query.shape[0], query.shape[1], key.shape[1]), dtype="bool"
        )

    def get_config(self):
        return {**super().get_config(), "pattern": str(self.pattern)}
