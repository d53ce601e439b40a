"""Attention patterns: small serializable rules composed with `&`, `|`, `~`.

A pattern says which keys each query may see, independent of padding. It
becomes a `(B, T, S)` boolean mask only when called with the lengths (and
per-example tensors) of a batch, so one pattern serves every length.

Per-example inputs a pattern may read, by name:

- `segment_ids` `(B, T)` and `key_segment_ids` `(B, S)` for `segment`;
- `prefix_length` `(B,)` for `prefix` without a fixed length;
- `span_length` and `span_position` `(B,)` for `span` without fixed values.

Example:

>>> import keras_dynmask as kd
>>> pattern = kd.parse_pattern("causal | prefix")
>>> sorted(pattern.required_inputs())
['prefix_length']
>>> pattern.hides_future()
False
"""

import re

import keras

from keras_dynmask.core import masks
from keras_dynmask.core._checks import check_int

# The per-example inputs patterns read, with their shapes after the batch
# axis: the one list that layers' call arguments (a test checks them) and
# the model builders' inputs follow.
PATTERN_INPUTS = {
    "segment_ids": (None,),  # (B, T)
    "key_segment_ids": (None,),  # (B, S), when keys are other positions
    "prefix_length": (),  # (B,)
    "span_length": (),  # (B,)
    "span_position": (),  # (B,)
}

_register = keras.saving.register_keras_serializable(package="keras_dynmask")


class Pattern:
    """Base class: which keys each query may see.

    Compose patterns with `&` (both allow), `|` (either allows) and `~`
    (the complement). `str(pattern)` is text that `parse_pattern` reads back.

    Example:

    >>> import keras_dynmask as kd
    >>> pattern = kd.Causal() & kd.Window(1)
    >>> print(pattern)
    causal & window(1)
    >>> pattern.mask(4).numpy().astype(int)[0]
    array([[1, 0, 0, 0],
           [1, 1, 0, 0],
           [0, 1, 1, 0],
           [0, 0, 1, 1]])
    """

    # Precedence for printing: `~` binds tighter than `&`, `&` than `|`.
    _precedence = 3

    def required_inputs(self):
        """The per-example input names this pattern cannot do without."""
        return frozenset()

    def leaves(self):
        """The word patterns this pattern is made of, left to right."""
        return (self,)

    def parameters(self):
        """This word's fixed int parameters by name (`{"left": 3, ...}`)."""
        return {}

    def variable_names(self):
        """`{parameter: name}` of the variables a layer holds for this
        word's parameters: `"NAME_left"` for `window(2, name=NAME)`, else
        the word and its numbers (`"window_2_left"`). The name depends
        only on the word itself, never on where it stands in a pattern, so
        a checkpoint or a schedule binds to the same word in any order;
        equal words share their variables."""
        return {}

    def hides_future(self, values=None, held_unknown=False):
        """Whether no query can see a later key, at any length.

        Decided from the pattern's words (`causal & window(3)` and
        `~backward` hide the future; `causal | ~window(20)` does not),
        conservatively: `True` is a guarantee, `False` means a later key
        may be visible.

        Args:
            values: optional `{variable name: int}` (see `variable_names`)
                standing in for parameters a layer holds, e.g. a window's
                current size.
            held_unknown: bool. Whether the parameters a layer holds count
                as unknown (a schedule may set them to anything): the
                answer then holds for every value they may take, so
                `window(3, 0)` alone is not known to hide the future.
                Defaults to `False`.

        >>> import keras_dynmask as kd
        >>> pattern = kd.parse_pattern("window(3, 0)")
        >>> pattern.hides_future(), pattern.hides_future(held_unknown=True)
        (True, False)
        """
        return self._future(None if held_unknown else (values or {}))[0]

    def _future(self, values):
        """`(never, always)`: whether this pattern shows a query no later
        key, and whether it shows it every later key, at every length.
        `values` as for `hides_future`, or `None` (held parameters
        unknown)."""
        raise NotImplementedError

    def mask(
        self, query_length, key_length=None, offset=0, variables=None, **inputs
    ):
        """Builds the boolean mask for one batch.

        Args:
            query_length: int or scalar tensor. `T`.
            key_length: int or scalar tensor. `S`. Defaults to `T`.
            offset: int or int tensor `(B,)`. Absolute position of query 0,
                for decoding with a cache. Defaults to `0`.
            variables: optional `{name: variable}` (see `variable_names`)
                standing in for fixed parameters, so a layer can schedule
                them.
            **inputs: per-example tensors named in `PATTERN_INPUTS`.

        Returns:
            bool `(B, T, S)` (`B` is 1 when nothing varies per example).
        """
        self.check_inputs(inputs)
        key_length = query_length if key_length is None else key_length
        inputs = {**inputs, "_variables": variables or {}}
        return self._mask(query_length, key_length, offset, inputs)

    def check_inputs(self, inputs):
        """Raises `ValueError` unless the per-example `inputs` (a dict)
        are known names and hold every one this pattern needs."""
        unknown = sorted(set(inputs) - set(PATTERN_INPUTS))
        if unknown:
            raise ValueError(
                f"Unknown pattern input {unknown[0]!r}; expected one of "
                f"{', '.join(PATTERN_INPUTS)}"
            )
        for name in sorted(self.required_inputs()):
            if inputs.get(name) is None:
                raise ValueError(
                    f"Pattern '{self}' needs the per-example input {name}, "
                    f"received {name}=None"
                )

    def _mask(self, query_length, key_length, offset, inputs):
        raise NotImplementedError

    def _value(self, inputs, name):
        """A parameter: the variable a layer holds for it, or the int."""
        held = inputs.get("_variables", {})
        return held.get(self.variable_names()[name], getattr(self, name))

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __and__(self, other):
        return And(self, other)

    def __or__(self, other):
        return Or(self, other)

    def __rand__(self, other):
        return And(other, self)

    def __ror__(self, other):
        return Or(other, self)

    def __invert__(self):
        return Not(self)

    def __eq__(self, other):
        return type(self) is type(other) and (
            self.get_config() == other.get_config()
        )

    def __hash__(self):
        return hash(str(self))

    def __repr__(self):
        return f"parse_pattern({str(self)!r})"


_NAME = re.compile(r"[A-Za-z_]\w*\Z")


def _check_name(name):
    if name is not None and not (isinstance(name, str) and _NAME.match(name)):
        raise ValueError(
            "name must be an identifier (letters, digits and _, not "
            f"starting with a digit), received name={name!r}"
        )
    return name


class _Word(Pattern):
    """A word with int parameters, which a layer holds in variables; an
    optional `name` names them (`window(2, name=local)`)."""

    _word = None

    def _numbers(self):
        """The ints the word's text shows, in order."""
        raise NotImplementedError

    def variable_names(self):
        if not self.parameters():
            return {}
        prefix = self.name or "_".join(
            [self._word, *(str(n) for n in self._numbers())]
        )
        return {key: f"{prefix}_{key}" for key in self.parameters()}

    def _held(self, values, key):
        """A parameter's value for `hides_future`: given, or the int;
        `None` when `values` is (held parameters unknown) or the parameter
        is read per example."""
        if values is None or getattr(self, key) is None:
            return None
        name = self.variable_names().get(key)
        return int(values.get(name, getattr(self, key)))

    def get_config(self):
        config = {key: getattr(self, key) for key in self._config_keys}
        if self.name is not None:
            config["name"] = self.name
        return config

    def __str__(self):
        numbers = [str(n) for n in self._numbers()]
        if self.name is not None:
            numbers.append(f"name={self.name}")
        if not numbers:
            return self._word
        return f"{self._word}({', '.join(numbers)})"


def _check_pattern(name, value):
    if not isinstance(value, Pattern):
        raise ValueError(
            f"{name} must be a Pattern (compose patterns only with patterns), "
            f"received {name}={value!r} of type {type(value).__name__}"
        )
    return value


@_register
class Causal(Pattern):
    """Forward pattern: query `i` sees key `j` iff `j <= i`.

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Causal().mask(3).numpy().astype(int)[0]
    array([[1, 0, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """

    def _mask(self, query_length, key_length, offset, inputs):
        return masks.causal_mask(query_length, key_length, offset)

    def _future(self, values):
        return True, False

    def __str__(self):
        return "causal"


@_register
class Backward(Pattern):
    """Backward pattern: query `i` sees key `j` iff `j >= i`.

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Backward().mask(3).numpy().astype(int)[0]
    array([[1, 1, 1],
           [0, 1, 1],
           [0, 0, 1]])
    """

    def _mask(self, query_length, key_length, offset, inputs):
        return masks.backward_mask(query_length, key_length, offset)

    def _future(self, values):
        return False, True

    def __str__(self):
        return "backward"


@_register
class Bidirectional(Pattern):
    """Every query sees every key.

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Bidirectional().mask(2, 3).numpy().astype(int)[0]
    array([[1, 1, 1],
           [1, 1, 1]])
    """

    def _mask(self, query_length, key_length, offset, inputs):
        return masks.bidirectional_mask(query_length, key_length, offset)

    def _future(self, values):
        return False, True

    def __str__(self):
        return "bidirectional"


@_register
class Window(_Word):
    """Query `i` sees key `j` iff `i - left <= j <= i + right`.

    Args:
        left: int >= 0. Keys visible before the query.
        right: int >= 0. Keys visible after it. Defaults to `left`.
        name: optional identifier naming the variables a layer holds for
            `left` and `right` (`NAME_left`, `NAME_right`).

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Window(1, 0).mask(3).numpy().astype(int)[0]
    array([[1, 0, 0],
           [1, 1, 0],
           [0, 1, 1]])
    >>> print(kd.Window(2, name="local"))
    window(2, name=local)
    """

    _word = "window"
    _config_keys = ("left", "right")

    def __init__(self, left, right=None, name=None):
        self.left = check_int("left", left, minimum=0)
        self.right = self.left if right is None else right
        self.right = check_int("right", self.right, minimum=0)
        self.name = _check_name(name)

    def parameters(self):
        return {"left": self.left, "right": self.right}

    def _numbers(self):
        if self.left == self.right:
            return (self.left,)
        return (self.left, self.right)

    def _mask(self, query_length, key_length, offset, inputs):
        return masks.window_mask(
            self._value(inputs, "left"),
            self._value(inputs, "right"),
            query_length=query_length,
            key_length=key_length,
            offset=offset,
        )

    def _future(self, values):
        return self._held(values, "right") == 0, False


@_register
class Prefix(_Word):
    """Every query sees key `j` iff `j < P`.

    Args:
        length: int >= 0 or `None`. A fixed `P`; `None` reads the
            per-example input `prefix_length`. Defaults to `None`.
        name: optional identifier naming the variable a layer holds for a
            fixed `length` (`NAME_length`).

    Example:

    >>> import numpy as np, keras_dynmask as kd
    >>> kd.Prefix(2).mask(3).numpy().astype(int)[0]
    array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 0]])
    >>> prefix_lm = kd.Causal() | kd.Prefix()  # per-example lengths
    >>> prefix_lm.mask(3, prefix_length=np.array([2])).numpy().astype(int)[0]
    array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """

    _word = "prefix"
    _config_keys = ("length",)

    def __init__(self, length=None, name=None):
        if length is not None:
            length = check_int("length", length, minimum=0)
        self.length = length
        self.name = _check_name(name)

    def required_inputs(self):
        return frozenset() if self.length is not None else {"prefix_length"}

    def parameters(self):
        return {} if self.length is None else {"length": self.length}

    def _numbers(self):
        return () if self.length is None else (self.length,)

    def _mask(self, query_length, key_length, offset, inputs):
        if self.length is None:
            length = inputs["prefix_length"]
        else:
            length = self._value(inputs, "length")
        return masks.prefix_mask(length, query_length, key_length, offset)

    def _future(self, values):
        # Keys before 1 are never later than any query.
        length = self._held(values, "length")
        return length is not None and length <= 1, False


@_register
class Segment(Pattern):
    """Query `i` sees key `j` iff both lie in the same segment.

    Reads `segment_ids` `(B, T)` (and `key_segment_ids` `(B, S)` when the
    keys are other positions): packed documents see only themselves.

    Example:

    >>> import numpy as np, keras_dynmask as kd
    >>> segments = np.array([[0, 0, 1]])
    >>> kd.Segment().mask(3, segment_ids=segments).numpy().astype(int)[0]
    array([[1, 1, 0],
           [1, 1, 0],
           [0, 0, 1]])
    """

    def required_inputs(self):
        return frozenset({"segment_ids"})

    def _mask(self, query_length, key_length, offset, inputs):
        return masks.segment_mask(
            inputs["segment_ids"], inputs.get("key_segment_ids")
        )

    def _future(self, values):
        return False, False

    def __str__(self):
        return "segment"


@_register
class Span(_Word):
    """Every query sees key `j` iff `position <= j < position + length`.

    Args:
        length: int >= 0 or `None`. `LEN`; `None` reads `span_length`.
        position: int >= 0 or `None`. `POS`; `None` reads `span_position`.
            Give both or neither. Both default to `None`.
        name: optional identifier naming the variables a layer holds for
            fixed values (`NAME_length`, `NAME_position`).

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Span(2, 1).mask(2, 4).numpy().astype(int)[0]
    array([[0, 1, 1, 0],
           [0, 1, 1, 0]])
    """

    _word = "span"
    _config_keys = ("length", "position")

    def __init__(self, length=None, position=None, name=None):
        if (length is None) != (position is None):
            raise ValueError(
                "Span needs both length and position, or neither (to read "
                "span_length and span_position per example), received "
                f"length={length!r}, position={position!r}"
            )
        if length is not None:
            length = check_int("length", length, minimum=0)
            position = check_int("position", position, minimum=0)
        self.length = length
        self.position = position
        self.name = _check_name(name)

    def required_inputs(self):
        if self.length is not None:
            return frozenset()
        return frozenset({"span_length", "span_position"})

    def parameters(self):
        if self.length is None:
            return {}
        return {"length": self.length, "position": self.position}

    def _numbers(self):
        if self.length is None:
            return ()
        return (self.length, self.position)

    def _mask(self, query_length, key_length, offset, inputs):
        if self.length is None:
            length = inputs["span_length"]
            position = inputs["span_position"]
        else:
            length = self._value(inputs, "length")
            position = self._value(inputs, "position")
        return masks.span_attention_mask(
            length, position, query_length, key_length, offset
        )

    def _future(self, values):
        length = self._held(values, "length")
        return length == 0, False


class _Combination(Pattern):
    """`&` or `|` of two or more patterns."""

    _symbol = None
    _combine = None

    def __init__(self, *patterns):
        if len(patterns) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least two patterns, "
                f"received patterns={patterns!r}"
            )
        flat = []
        for index, pattern in enumerate(patterns):
            _check_pattern(f"patterns[{index}]", pattern)
            # `a & b & c` keeps one flat level, which also prints flat.
            flat.extend(
                pattern.patterns if type(pattern) is type(self) else [pattern]
            )
        self.patterns = tuple(flat)

    def required_inputs(self):
        return frozenset().union(*(p.required_inputs() for p in self.patterns))

    def leaves(self):
        return tuple(leaf for p in self.patterns for leaf in p.leaves())

    def _future(self, values):
        found = [p._future(values) for p in self.patterns]
        never, always = zip(*found, strict=True)
        on_never, on_always = self._quantifiers
        return on_never(never), on_always(always)

    def _mask(self, query_length, key_length, offset, inputs):
        result = None
        for pattern in self.patterns:
            mask = pattern._mask(query_length, key_length, offset, inputs)
            result = mask if result is None else self._combine(result, mask)
        return result

    def get_config(self):
        return {
            "patterns": [
                keras.saving.serialize_keras_object(p) for p in self.patterns
            ]
        }

    @classmethod
    def from_config(cls, config):
        return cls(
            *(
                keras.saving.deserialize_keras_object(p)
                for p in config["patterns"]
            )
        )

    def __str__(self):
        parts = []
        for pattern in self.patterns:
            text = str(pattern)
            if pattern._precedence <= self._precedence:
                text = f"({text})"
            parts.append(text)
        return f" {self._symbol} ".join(parts)


@_register
class And(_Combination):
    """Keys that every one of `patterns` allows (`a & b`).

    Example:

    >>> import keras_dynmask as kd
    >>> kd.And(kd.Causal(), kd.Backward()).mask(3).numpy().astype(int)[0]
    array([[1, 0, 0],
           [0, 1, 0],
           [0, 0, 1]])
    """

    _symbol = "&"
    _precedence = 2
    _combine = staticmethod(keras.ops.logical_and)
    # A later key is hidden if any part hides it, shown if all show it.
    _quantifiers = (any, all)


@_register
class Or(_Combination):
    """Keys that any one of `patterns` allows (`a | b`).

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Or(kd.Causal(), kd.Prefix(2)).mask(3).numpy().astype(int)[0]
    array([[1, 1, 0],
           [1, 1, 0],
           [1, 1, 1]])
    """

    _symbol = "|"
    _precedence = 1
    _combine = staticmethod(keras.ops.logical_or)
    _quantifiers = (all, any)


@_register
class Not(Pattern):
    """Keys that `pattern` hides (`~pattern`).

    Example:

    >>> import keras_dynmask as kd
    >>> kd.Not(kd.Backward()).mask(3).numpy().astype(int)[0]
    array([[0, 0, 0],
           [1, 0, 0],
           [1, 1, 0]])
    """

    def __init__(self, pattern):
        self.pattern = _check_pattern("pattern", pattern)

    def required_inputs(self):
        return self.pattern.required_inputs()

    def leaves(self):
        return self.pattern.leaves()

    def _future(self, values):
        never, always = self.pattern._future(values)
        return always, never

    def _mask(self, query_length, key_length, offset, inputs):
        return keras.ops.logical_not(
            self.pattern._mask(query_length, key_length, offset, inputs)
        )

    def get_config(self):
        return {"pattern": keras.saving.serialize_keras_object(self.pattern)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.saving.deserialize_keras_object(config["pattern"]))

    def __str__(self):
        text = str(self.pattern)
        if self.pattern._precedence < self._precedence:
            text = f"({text})"
        return f"~{text}"
