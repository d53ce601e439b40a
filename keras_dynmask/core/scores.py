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

    >>> import keras_dynmask as kd
    >>> isinstance(kd.ALiBi(), kd.Score), kd.SoftCap(30.0).additive
    (True, False)
    """

    additive = True

    def weight_shapes(self, num_heads):
        """`{name: shape}` of the weights the holding layer creates (zeros
        to start); none by default."""
        return {}

    def check_heads(self, num_heads):
        """Raises a `ValueError` when the modifier cannot serve a layer of
        `num_heads` heads (the layer calls it when constructed)."""

    def bias(self, num_heads, query_positions, key_positions, variables):
        """float32 `(B|1, N|1, T, S)` added to the scores."""
        raise NotImplementedError

    def key_bias(self, num_heads, key_positions, reference, variables):
        """For keys that never follow their query: float32 `(B|1, N, 1, S)`
        equal to `bias` up to a term constant along each query's row
        (which a softmax ignores), measured from the position `reference`
        (scalar, or `(B|1, 1)`); `None` when the bias has no such form.
        By default, the product of `key_features` where there are some."""
        features = self.key_features(num_heads, key_positions, reference)
        if features is None:
            return None
        per_head, per_key = features
        per_head = ops.reshape(per_head, (1, -1, 1, 1))
        return per_head * ops.expand_dims(ops.expand_dims(per_key, 1), 1)

    def key_features(self, num_heads, key_positions, reference):
        """`key_bias` as a product, or `None`: float32 `(N,)` per head and
        `(B|1, S)` per key whose product is `key_bias`, so that a query
        and key one feature longer carry the bias through their dot
        product."""
        return None

    def divided(self, num_heads, query_positions, key_positions):
        """This modifier as `finish(scores / divisor[h] + table)`, or
        `None`, so that attention may divide each head's queries instead
        of the scores (the scores' product then does the division: a pass
        less over them). ALiBi: `-slope[h] * (scores / -slope[h] +
        |query - key|)`; a soft cap: `cap * tanh(scores / cap)`.

        Returns:
            `(divisors, table, finish)`: `num_heads` floats of one sign
            (known when tracing); a float32 `(B|1, 1, T, S)` table or
            `None`; a callable on the float32 `(B, N, T, S)` sum, or
            `None` for its product by each head's divisor.
        """
        return None

    def apply(
        self, scores, query_positions, key_positions, variables=None, batch=None
    ):
        """The modified float32 scores `(B, N, T, S)`.

        Args:
            scores: float32 `(B, N, T, S)`.
            query_positions: int `(T,)` or `(B, T)`: absolute positions.
            key_positions: int `(S,)` or `(B, S)`.
            variables: `{name: variable}` for `weight_shapes`' names.
            batch: int `(B,)`, the example each row of `scores` belongs to
                (rows are blocks or tiles of examples on the block-wise
                paths), or `None` for `arange(B)`.
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


def _distances(query_positions, key_positions, dtype="int32"):
    """`(B|1, 1, T, S)` of `dtype`: key position minus query position."""
    query = ops.cast(query_positions, dtype)
    key = ops.cast(key_positions, dtype)
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

    >>> import numpy as np, keras_dynmask as kd
    >>> mha = kd.MultiHeadAttention(4, 8, pattern="causal", score=kd.ALiBi())
    >>> x = np.zeros((1, 5, 16), "float32")
    >>> tuple(mha(x, x).shape), str(mha.score[0])
    ((1, 5, 16), 'alibi')
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

    def check_heads(self, num_heads):
        if self.slopes is not None and len(self.slopes) != num_heads:
            raise ValueError(
                f"ALiBi needs one slope per head ({num_heads}), received "
                f"slopes={self.slopes!r}"
            )

    def bias(self, num_heads, query_positions, key_positions, variables):
        factors, distance, _ = self.divided(
            num_heads, query_positions, key_positions
        )
        factors = ops.convert_to_tensor(factors, "float32")
        return ops.reshape(factors, (-1, 1, 1)) * distance

    def key_features(self, num_heads, key_positions, reference):
        # Keys at or before the query: -slope * (q - k) is slope * k less a
        # constant per query; measured from `reference` (the last query)
        # the keys near each query stay near 0, where float32 is finest.
        self.check_heads(num_heads)
        slopes = self.slopes or alibi_slopes(num_heads)
        key = ops.cast(key_positions, "int32")
        key = key[None] if len(key.shape) == 1 else key
        distance = ops.cast(key - ops.cast(reference, "int32"), "float32")
        return ops.convert_to_tensor(slopes, "float32"), distance

    def divided(self, num_heads, query_positions, key_positions):
        self.check_heads(num_heads)
        slopes = self.slopes or alibi_slopes(num_heads)
        # In float32 from the start (exact to 2**24): one pass less.
        distance = _distances(query_positions, key_positions, "float32")
        return [-s for s in slopes], ops.abs(distance), None

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

    >>> import numpy as np, keras_dynmask as kd
    >>> scores = np.array([[[[0.5, 8.0]]]], "float32")  # (B, N, T, S)
    >>> capped = kd.SoftCap(2.0).apply(scores, np.arange(1), np.arange(2))
    >>> np.round(np.asarray(capped), 3)
    array([[[[0.49 , 1.999]]]], dtype=float32)
    """

    additive = False

    def __init__(self, cap):
        if isinstance(cap, bool) or not isinstance(cap, (int, float)):
            raise ValueError(f"cap must be a float > 0, received cap={cap!r}")
        if not cap > 0 or math.isinf(cap):
            raise ValueError(f"cap must be a float > 0, received cap={cap!r}")
        self.cap = float(cap)

    def apply(
        self, scores, query_positions, key_positions, variables=None, batch=None
    ):
        # A product, not a quotient: cheaper per score on CPUs.
        return self._capped(scores * (1.0 / self.cap))

    def divided(self, num_heads, query_positions, key_positions):
        return [self.cap] * num_heads, None, self._capped

    def _capped(self, scores):
        return self.cap * ops.tanh(scores)

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

    >>> import keras_dynmask as kd
    >>> bias = kd.RelativeBias(8, 16, bidirectional=False)
    >>> bias.weight_shapes(num_heads=2)
    {'relative_bias_8_16': (8, 2)}
    >>> layer = kd.MultiHeadAttention(2, 4, pattern="causal", score=bias)
    >>> sorted(layer.score_variables), str(bias)
    (['relative_bias_8_16'], 'relative(8, 16, causal)')
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
            _distances(query_positions, key_positions),
            self.num_buckets,
            self.max_distance,
            self.bidirectional,
        )  # (B|1, 1, T, S)
        table = ops.take(variables[self.weight_name], buckets[:, 0], axis=0)
        # (B|1, T, S, N), then heads first (a lookup along the table's
        # second axis, which lands heads first, is slower on TensorFlow).
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

    >>> import keras, numpy as np, keras_dynmask as kd
    >>> def near(score, batch, head, query, key):
    ...     return score + keras.ops.where(abs(query - key) < 2, 1.0, 0.0)
    >>> mha = kd.MultiHeadAttention(2, 4, score=kd.ScoreFunction(near))
    >>> x = np.ones((1, 3, 8), "float32")
    >>> tuple(mha(x, x).shape)
    (1, 3, 8)
    """

    additive = False

    def __init__(self, function):
        if not callable(function):
            raise ValueError(
                f"function must be callable, received function={function!r}"
            )
        self.function = function

    def apply(
        self, scores, query_positions, key_positions, variables=None, batch=None
    ):
        def per_row(positions):
            positions = ops.cast(positions, "float32")
            return positions[None] if len(positions.shape) == 1 else positions

        query = per_row(query_positions)[:, None, :, None]
        key = per_row(key_positions)[:, None, None, :]
        if batch is None:
            batch = ops.arange(ops.shape(scores)[0])
        batch = ops.reshape(ops.cast(batch, "float32"), (-1, 1, 1, 1))
        head = ops.reshape(ops.arange(ops.shape(scores)[1]), (1, -1, 1, 1))
        head = ops.cast(head, "float32")
        return ops.cast(
            self.function(scores, batch, head, query, key), "float32"
        )

    def get_config(self):
        return {"function": keras.saving.serialize_keras_object(self.function)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["function"]))

    def __str__(self):
        return getattr(self.function, "__name__", "function")


def apply_scores(
    modifiers,
    scores,
    query_positions,
    key_positions,
    variables=None,
    batch=None,
):
    """`modifiers` applied in order to float32 scores `(B, N, T, S)` (the
    arguments as for `Score.apply`)."""
    scores = ops.cast(scores, "float32")
    for modifier in modifiers:
        scores = modifier.apply(
            scores, query_positions, key_positions, variables or {}, batch
        )
    return scores


class Scoring:
    """A layer's modifiers with its weights, as the attention paths take
    them: placed at the positions of one computation (`at`), they modify
    scores (`__call__`) or, when every one is additive, give the bias a
    fused kernel adds (`bias`).

    Args:
        modifiers: list of `Score`.
        variables: `{name: variable}` for their `weight_shapes`.
        causal: bool. Whether no visible key ever follows its query (the
            layer's pattern is bounded by `causal`): additive modifiers
            may then give a per-key bias (`Score.key_bias`), which the
            kernel broadcasts instead of reading a `(T, S)` one, or ride
            in the scores' product (`folded`).
    """

    def __init__(self, modifiers, variables=None, causal=False):
        self.modifiers = list(modifiers)
        self.variables = dict(variables or {})
        self.causal = bool(causal)
        self.positions = None

    @property
    def additive(self):
        """Whether every modifier only adds a bias independent of the
        score."""
        return all(m.additive for m in self.modifiers)

    def at(self, query_positions, key_positions, batch=None):
        """These modifiers placed at absolute positions: int `(T,)` or
        `(B, T)` for the queries, `(S,)` or `(B, S)` for the keys, and the
        example of each row (see `Score.apply`)."""
        placed = Scoring(self.modifiers, self.variables, self.causal)
        placed.positions = (query_positions, key_positions, batch)
        return placed

    def __call__(self, scores):
        """The modified float32 scores `(B, N, T, S)`."""
        if not self.modifiers:
            return ops.cast(scores, "float32")
        if self.additive:
            return ops.cast(scores, "float32") + self.bias(scores.shape[1])
        return apply_scores(
            self.modifiers,
            scores,
            *self.positions[:2],
            self.variables,
            self.positions[2],
        )

    def _reference(self):
        """int32 `(B|1, 1)`: the last query of each row. The keys near
        every query lie within the queries' span of it."""
        query_positions = self.positions[0]
        return ops.max(
            ops.reshape(
                ops.cast(query_positions, "int32"),
                (-1, ops.shape(query_positions)[-1]),
            ),
            axis=-1,
            keepdims=True,
            initial=0,  # no queries (no tiles kept): any will do
        )

    def folded(self, query_heads, key_heads):
        """`(query_heads, key_heads, rest)` with the per-key modifiers
        (`Score.key_features`: ALiBi under a causal pattern) carried by
        one more feature per head, so the scores' product adds their bias
        with no pass of its own; `rest` places the other modifiers (or is
        `None`). `None` when nothing folds: not `causal`, a modifier that
        is not additive (the dropped constant would then matter), or heads
        that are not float32 (a position in bfloat16 is exact only to
        256)."""
        dtype = keras.backend.standardize_dtype(query_heads.dtype)
        if not (self.causal and self.additive and dtype == "float32"):
            return None
        num_heads = query_heads.shape[2]
        _, key_positions, _ = self.positions
        reference = self._reference()
        found = {}
        for index, modifier in enumerate(self.modifiers):
            features = modifier.key_features(
                num_heads, key_positions, reference
            )
            if features is not None:
                found[index] = features
        if not found:
            return None
        # (B, T, N, n) per head and (B, S, N, n) per key.
        per_head = ops.stack([f[0] for f in found.values()], -1)
        per_key = ops.stack([f[1] for f in found.values()], -1)
        query_extra = ops.broadcast_to(
            per_head, (*ops.shape(query_heads)[:2], *per_head.shape)
        )
        key_extra = ops.broadcast_to(
            ops.expand_dims(per_key, 2),
            (*ops.shape(key_heads)[:3], len(found)),
        )
        rest = [m for i, m in enumerate(self.modifiers) if i not in found]
        return (
            ops.concatenate([query_heads, query_extra], axis=-1),
            ops.concatenate([key_heads, key_extra], axis=-1),
            self._placed(rest),
        )

    def divided(self, num_heads, masked_score, bias_too=True):
        """The first modifier as `finish(scores / divisor[h] + table)`
        (`Score.divided`: ALiBi, a soft cap), so that each head's queries
        may be divided instead of the scores: `(divisors, table, finish,
        rest, hidden)`, or `None` when it has no such form, its divisors
        are not all of one sign, or it only adds a bias and `bias_too` is
        false (where a kernel would add that bias fused).

        `rest` places the other modifiers (or is `None`). `hidden` is the
        table's entry for a hidden key, which takes its modified score to
        `masked_score` or below in every head (the mask then rides in the
        table: no pass of its own), or `None` where the mask cannot: no
        table, a `finish` of its own, a later modifier that is not
        additive (a soft cap would lift a hidden score back), or an entry
        too large for float32.
        """
        if not self.modifiers:
            return None
        first = self.modifiers[0]
        if first.additive and not bias_too:
            return None
        query_positions, key_positions, _ = self.positions
        found = first.divided(num_heads, query_positions, key_positions)
        if found is None:
            return None
        divisors, table, finish = found
        if not (all(d > 0 for d in divisors) or all(d < 0 for d in divisors)):
            return None
        rest = self._placed(self.modifiers[1:])
        hidden = None
        if table is not None and finish is None:
            if rest is None or rest.additive:
                # -1e9 / (the smallest divisor, with their sign).
                smallest = min(abs(d) for d in divisors)
                hidden = masked_score / math.copysign(smallest, divisors[0])
                hidden = hidden if abs(hidden) < 1e30 else None
        return divisors, table, finish, rest, hidden

    def _placed(self, modifiers):
        """`modifiers` at these positions, or `None` if there are none."""
        if not modifiers:
            return None
        return Scoring(modifiers, self.variables, self.causal).at(
            *self.positions
        )

    def bias(self, num_heads):
        """float32 `(B|1, N, T|1, S)`: the sum of the additive modifiers'
        biases (per key where `causal` allows it), or `None` without
        modifiers."""
        query_positions, key_positions, _ = self.positions
        reference = self._reference() if self.causal else None
        total = None
        for modifier in self.modifiers:
            bias = None
            if self.causal:
                bias = modifier.key_bias(
                    num_heads, key_positions, reference, self.variables
                )
            if bias is None:
                bias = modifier.bias(
                    num_heads, query_positions, key_positions, self.variables
                )
            total = bias if total is None else total + bias
        return total


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
        if depth < 0:
            break
        if character == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise ValueError(f"score text {text!r} has unbalanced parentheses")
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
    """A list of modifiers from `None`, a modifier, a list of them (or of
    their configs, as `score_config` writes them), or their text."""
    if score is None:
        return []
    if isinstance(score, str):
        return parse_scores(score)
    if isinstance(score, Score):
        return [score]
    if isinstance(score, (list, tuple)):
        found = [
            keras.saving.deserialize_keras_object(s)
            if isinstance(s, dict)
            else s
            for s in score
        ]
        if all(isinstance(s, Score) for s in found):
            return found
    raise ValueError(
        f"{name} must be a score modifier, a list of them or their text "
        f"such as 'alibi', received {name}={score!r}"
    )


def score_config(modifiers):
    """What a layer's config holds for its modifiers: `None` for none,
    their text when it reads back the same, else their configs."""
    if not modifiers:
        return None
    text = ", ".join(str(m) for m in modifiers)
    try:
        if parse_scores(text) == list(modifiers):
            return text
    except ValueError:
        pass  # a function, or a name the text form does not hold
    return [keras.saving.serialize_keras_object(m) for m in modifiers]
