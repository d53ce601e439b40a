"""Score modifiers: how much a visible key scores, beside patterns.

A pattern decides which keys a query may see (FlexAttention's
`mask_mod`); a score modifier changes the score of each visible key
(its `score_mod`): ALiBi's distance penalty, Gemma 2's soft cap, T5's
learned relative-position bias, or a function of the user's. Modifiers
are small serializable objects applied in order to float32 scores
`(B, N, T, S)`, with the absolute positions of the queries (a cached
decoding step passes its offset) and of the keys, so one modifier
serves every length.

A modifier with weights (`RelativeBias`) names their shapes in
`weight_shapes`; the attention layer that holds it creates them and
passes them back as `variables`, as layers do for a pattern's scheduled
parameters.

Example:

>>> import numpy as np
>>> from keras_dynmask.core.scores import ALiBi, SoftCap, apply_scores
>>> scores = np.zeros((1, 2, 3, 3), "float32")
>>> out = apply_scores([ALiBi(), SoftCap(5.0)], scores, np.arange(3),
...                    np.arange(3))
>>> np.round(np.asarray(out)[0, 0], 4)  # head 0 of 2: slope 1/16
array([[ 0.    , -0.0625, -0.125 ],
       [-0.0625,  0.    , -0.0625],
       [-0.125 , -0.0625,  0.    ]], dtype=float32)
"""

import math
import re

import keras
from keras import ops

from keras_dynmask.core._checks import check_int

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


class Score:
    """Base class: changes the scores of visible keys.

    Subclasses give `bias` (a change independent of the score, which a
    fused kernel can take as an additive bias) or override `apply`.
    `str(modifier)` is its text form.
    """

    additive = True

    def weight_shapes(self, num_heads):
        """`{name: shape}` of the weights the holding layer creates (zeros
        to start); none by default."""
        return {}

    def bias(self, num_heads, query_positions, key_positions, variables):
        """float32 `(B|1, N|1, T, S)` added to the scores."""
        raise NotImplementedError

    def apply(self, scores, query_positions, key_positions, variables=None):
        """The modified float32 scores `(B, N, T, S)`.

        Args:
            scores: float32 `(B, N, T, S)`.
            query_positions: int `(T,)` or `(B, T)`: absolute positions.
            key_positions: int `(S,)` or `(B, S)`.
            variables: `{name: variable}` for `weight_shapes`' names.
        """
        bias = self.bias(
            scores.shape[1], query_positions, key_positions, variables or {}
        )
        return scores + bias

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    def __hash__(self):
        return hash((type(self).__name__, str(self)))

    def __repr__(self):
        return f"<{type(self).__name__} {self}>"


def _distances(query_positions, key_positions):
    """int32 `(B|1, 1, T, S)`: key position minus query position."""
    query = ops.cast(query_positions, "int32")
    key = ops.cast(key_positions, "int32")
    query = query[None] if len(query.shape) == 1 else query
    key = key[None] if len(key.shape) == 1 else key
    return ops.expand_dims(key[:, None, :] - query[:, :, None], 1)


def alibi_slopes(num_heads):
    """The ALiBi paper's per-head slopes: `2**(-8 / n * (h + 1))` for `n`
    heads a power of two; otherwise those of the power of two below, then
    every other slope of the power of two above (Press et al., 2022).

    >>> alibi_slopes(4)
    [0.25, 0.0625, 0.015625, 0.00390625]
    """
    num_heads = check_int("num_heads", num_heads, minimum=1)
    below = 2 ** math.floor(math.log2(num_heads))

    def geometric(n):
        start = 2 ** (-8 / n)
        return [start ** (h + 1) for h in range(n)]

    return geometric(below) + geometric(2 * below)[0::2][: num_heads - below]


@_register
class ALiBi(Score):
    """Attention with linear biases: `-slope[h] * |query - key|`.

    With a causal pattern it is the paper's bias (keys never follow the
    query); without one, the distance counts both ways. No position
    embedding is needed, so a model trained short runs longer.

    Args:
        slopes: list of floats, one per head, or `None` for the paper's
            (`alibi_slopes`). Defaults to `None`.
    """

    def __init__(self, slopes=None):
        if slopes is not None:
            slopes = [float(s) for s in slopes]
            if not slopes:
                raise ValueError(
                    f"slopes must be one float per head, received "
                    f"slopes={slopes!r}"
                )
        self.slopes = slopes

    def bias(self, num_heads, query_positions, key_positions, variables):
        slopes = self.slopes or alibi_slopes(num_heads)
        if len(slopes) != num_heads:
            raise ValueError(
                f"ALiBi needs one slope per head ({num_heads}), received "
                f"slopes={slopes!r}"
            )
        distance = ops.abs(_distances(query_positions, key_positions))
        slopes = ops.reshape(
            ops.convert_to_tensor(slopes, "float32"), (-1, 1, 1)
        )
        return -slopes * ops.cast(distance, "float32")

    def get_config(self):
        return {"slopes": self.slopes}

    def __str__(self):
        if self.slopes is None:
            return "alibi"
        return f"alibi({', '.join(repr(s) for s in self.slopes)})"


@_register
class SoftCap(Score):
    """Gemma 2's logit soft-capping: `cap * tanh(score / cap)`.

    Args:
        cap: float > 0.
    """

    additive = False

    def __init__(self, cap):
        if isinstance(cap, bool) or not isinstance(cap, (int, float)):
            raise ValueError(f"cap must be a float > 0, received cap={cap!r}")
        if not cap > 0 or math.isinf(cap):
            raise ValueError(f"cap must be a float > 0, received cap={cap!r}")
        self.cap = float(cap)

    def apply(self, scores, query_positions, key_positions, variables=None):
        return self.cap * ops.tanh(scores / self.cap)

    def get_config(self):
        return {"cap": self.cap}

    def __str__(self):
        return f"softcap({self.cap!r})"


def relative_buckets(distance, num_buckets, max_distance, bidirectional):
    """T5's bucket of each key-minus-query distance: exact below half the
    buckets (of a side), logarithmic up to `max_distance`, the last bucket
    beyond.

    Args:
        distance: int tensor, key position minus query position.
        num_buckets, max_distance: ints.
        bidirectional: bool. Whether later keys get buckets of their own
            (otherwise they share bucket 0).

    Returns:
        int32 tensor shaped as `distance`.
    """
    distance = ops.cast(distance, "int32")
    offset = 0
    if bidirectional:
        num_buckets //= 2
        offset = ops.where(distance > 0, num_buckets, 0)
        n = ops.abs(distance)
    else:
        n = ops.maximum(-distance, 0)
    exact = num_buckets // 2
    # Distances from `exact` to `max_distance` share the other buckets on a
    # log scale (the one float step; `n` is at least `exact` where used).
    ratio = ops.log(ops.cast(ops.maximum(n, exact), "float32") / exact)
    ratio = ratio / math.log(max_distance / exact)
    large = exact + ops.cast(ratio * (num_buckets - exact), "int32")
    large = ops.minimum(large, num_buckets - 1)
    return offset + ops.where(n < exact, n, large)


@_register
class RelativeBias(Score):
    """T5's learned relative-position bias: one weight per head and
    distance bucket (`relative_buckets`).

    Args:
        num_buckets: int >= 2 (>= 4 when `bidirectional`). Defaults to
            `32`.
        max_distance: int > the exact range. Defaults to `128`.
        bidirectional: bool. Defaults to `True` (an encoder); `False` for a
            causal decoder.
        name: str or `None`. Its weight is `NAME` (default
            `relative_bias_BUCKETS_DISTANCE`), shared by the layers'
            modifiers of one name.
    """

    def __init__(
        self, num_buckets=32, max_distance=128, bidirectional=True, name=None
    ):
        self.bidirectional = bool(bidirectional)
        minimum = 4 if self.bidirectional else 2
        self.num_buckets = check_int("num_buckets", num_buckets, minimum)
        side = self.num_buckets // (2 if self.bidirectional else 1)
        self.max_distance = check_int(
            "max_distance", max_distance, minimum=side // 2 + 1
        )
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"name must be a str, received name={name!r}")
        self.name = name

    @property
    def weight_name(self):
        return self.name or (
            f"relative_bias_{self.num_buckets}_{self.max_distance}"
        )

    def weight_shapes(self, num_heads):
        return {self.weight_name: (self.num_buckets, num_heads)}

    def bias(self, num_heads, query_positions, key_positions, variables):
        if self.weight_name not in variables:
            raise ValueError(
                f"RelativeBias needs its weight {self.weight_name!r} from "
                "the layer that holds it (see `weight_shapes`)"
            )
        buckets = relative_buckets(
            _distances(query_positions, key_positions)[:, 0],
            self.num_buckets,
            self.max_distance,
            self.bidirectional,
        )
        # (B|1, T, S, N), then heads first.
        table = ops.take(variables[self.weight_name], buckets, axis=0)
        return ops.cast(ops.transpose(table, (0, 3, 1, 2)), "float32")

    def get_config(self):
        return {
            "num_buckets": self.num_buckets,
            "max_distance": self.max_distance,
            "bidirectional": self.bidirectional,
            "name": self.name,
        }

    def __str__(self):
        text = f"relative({self.num_buckets}, {self.max_distance}"
        if not self.bidirectional:
            text += ", causal"
        return text + ")"


@_register
class ScoreFunction(Score):
    """A user's modifier: `function(score, batch, head, query_position,
    key_position)` in `keras.ops` (FlexAttention's `score_mod`).

    Each index is a float32 tensor that broadcasts against the float32
    scores `(B, N, T, S)`, so arithmetic with the score needs no cast
    (positions are exact up to 2**24); cast an index to int32 to look a
    table up. Register the function with
    `keras.saving.register_keras_serializable` so that models holding it
    save and load.

    Args:
        function: the callable.
    """

    additive = False

    def __init__(self, function):
        if not callable(function):
            raise ValueError(
                f"function must be callable, received function={function!r}"
            )
        self.function = function

    def apply(self, scores, query_positions, key_positions, variables=None):
        distance = _distances(query_positions, key_positions)
        key = ops.cast(key_positions, "int32")
        key = key[None] if len(key.shape) == 1 else key
        key = key[:, None, None, :]
        query = key - distance
        batch = ops.reshape(ops.arange(ops.shape(scores)[0]), (-1, 1, 1, 1))
        head = ops.reshape(ops.arange(ops.shape(scores)[1]), (1, -1, 1, 1))
        indices = [ops.cast(i, "float32") for i in (batch, head, query, key)]
        return ops.cast(self.function(scores, *indices), "float32")

    def get_config(self):
        return {"function": keras.saving.serialize_keras_object(self.function)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["function"]))

    def __str__(self):
        return getattr(self.function, "__name__", "function")


def apply_scores(
    modifiers, scores, query_positions, key_positions, variables=None
):
    """`modifiers` applied in order to float32 scores `(B, N, T, S)`."""
    scores = ops.cast(scores, "float32")
    for modifier in modifiers:
        scores = modifier.apply(
            scores, query_positions, key_positions, variables or {}
        )
    return scores


# word: (modifier class, how its arguments read)
_WORDS = {
    "alibi": (ALiBi, "floats"),
    "softcap": (SoftCap, "float"),
    "relative": (RelativeBias, "relative"),
}
_WORD = re.compile(r"\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_scores(text):
    """Turns modifier text into a list of modifiers, applied in order.

    Words, separated by commas: `alibi`, `alibi(S1, S2, ...)`,
    `softcap(C)`, `relative`, `relative(BUCKETS, DISTANCE)` and
    `relative(BUCKETS, DISTANCE, causal)`. `str()` of each modifier reads
    back (a `ScoreFunction` has no text form).

    Raises:
        ValueError: naming the text and the part that did not read.

    Example:

    >>> from keras_dynmask.core.scores import parse_scores
    >>> parse_scores("alibi, softcap(30)")
    [<ALiBi alibi>, <SoftCap softcap(30.0)>]
    """
    if not isinstance(text, str):
        raise ValueError(
            f"score text must be a str, received text={text!r} of type "
            f"{type(text).__name__}"
        )
    parts, depth, start = [], 0, 0
    for index, character in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    return [_word(part, text) for part in parts]


def _word(part, text):
    match = _WORD.match(part)
    word = match and match.group(1).lower()
    if word not in _WORDS:
        raise ValueError(
            f"score text {text!r}: {part.strip()!r} is not a modifier "
            f"(expected one of {', '.join(sorted(_WORDS))})"
        )
    kind, reads = _WORDS[word]
    arguments = [a.strip() for a in (match.group(2) or "").split(",")]
    arguments = [a for a in arguments if a]
    try:
        if reads == "floats":
            return kind([float(a) for a in arguments] or None)
        if reads == "float" and len(arguments) == 1:
            return kind(float(arguments[0]))
        if reads == "relative" and len(arguments) in (0, 2, 3):
            numbers = [int(a) for a in arguments[:2]]
            if len(arguments) == 3 and arguments[2].lower() != "causal":
                raise ValueError(arguments[2])
            return kind(*numbers, bidirectional=len(arguments) < 3)
    except ValueError as error:
        raise ValueError(
            f"score text {text!r}: {part.strip()!r} does not read ({error})"
        ) from None
    raise ValueError(
        f"score text {text!r}: {part.strip()!r} has the wrong number of "
        "arguments"
    )


def as_scores(score, name="score"):
    """A list of modifiers from `None`, a modifier, a list of them, or
    their text."""
    if score is None:
        return []
    if isinstance(score, str):
        return parse_scores(score)
    if isinstance(score, Score):
        return [score]
    if isinstance(score, (list, tuple)) and all(
        isinstance(s, Score) for s in score
    ):
        return list(score)
    raise ValueError(
        f"{name} must be a score modifier, a list of them or their text "
        f"such as 'alibi', received {name}={score!r}"
    )
