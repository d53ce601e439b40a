"""Every mask kind and many compositions against the numpy oracle."""

import json

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import keras_dynmask as kd
from keras_dynmask.core import patterns
from tests.oracle import oracle_mask

RNG = np.random.default_rng(0)
BATCH = 3

KINDS = [
    "causal",
    "backward",
    "bidirectional",
    "window(0)",
    "window(2)",
    "window(1, 3)",
    "prefix",
    "prefix(2)",
    "segment",
    "span",
    "span(2, 1)",
]

COMPOSITIONS = [
    "causal & window(3)",
    "causal | prefix",
    "segment & ~span(2, 4)",
    "causal & segment",
    "(causal | prefix) & segment",
    "backward & window(2, 0)",
    "~causal",
    "~(causal | backward)",
    "window(1) | span",
    "causal & ~window(0)",
    "segment & (causal & window(2) | prefix(1))",
    "~~backward",
    "bidirectional & ~segment",
    "prefix & span(3, 0) | causal & window(0, 1)",
]

# (T, S, offset): T = 1, T == S, T != S, decoding with a cache.
SHAPES = [(1, 1, 0), (5, 5, 0), (7, 7, 0), (3, 6, 3), (6, 4, 0), (1, 9, 8)]


def _inputs(query_length, key_length, per_example):
    """Per-example inputs, or scalars where the mask functions allow."""
    segments = np.sort(RNG.integers(0, 3, (BATCH, max(query_length, 1))), 1)
    key_segments = np.sort(RNG.integers(0, 3, (BATCH, key_length)), 1)
    if per_example:
        prefix = RNG.integers(0, key_length + 2, BATCH)
        span_length = RNG.integers(0, key_length + 2, BATCH)
        span_position = RNG.integers(0, key_length + 2, BATCH)
    else:
        prefix, span_length, span_position = 2, 3, 1
    inputs = {
        "segment_ids": segments.astype("int32"),
        "prefix_length": prefix,
        "span_length": span_length,
        "span_position": span_position,
    }
    if key_length != query_length:
        inputs["key_segment_ids"] = key_segments.astype("int32")
    return inputs


def _check(text, query_length, key_length, offset, per_example):
    pattern = kd.parse_pattern(text)
    inputs = _inputs(query_length, key_length, per_example)
    if per_example:
        offset = np.full(BATCH, offset, "int32") + np.arange(BATCH)
    got = pattern.mask(query_length, key_length, offset, **inputs)
    got = np.broadcast_to(
        keras.ops.convert_to_numpy(got), (BATCH, query_length, key_length)
    )
    want = oracle_mask(
        pattern, query_length, key_length, offset, BATCH, **inputs
    )
    np.testing.assert_array_equal(got, want, err_msg=text)


@pytest.mark.parametrize("per_example", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("text", KINDS + COMPOSITIONS)
def test_pattern_equals_oracle(text, shape, per_example):
    _check(text, *shape, per_example)


def test_functions_match_their_definitions():
    t = np.arange(4)
    i, j = t[:, None], t[None, :]
    np.testing.assert_array_equal(kd.causal_mask(4)[0], j <= i)
    np.testing.assert_array_equal(kd.backward_mask(4)[0], j >= i)
    np.testing.assert_array_equal(
        kd.window_mask(1, 2, query_length=4)[0], (i - 1 <= j) & (j <= i + 2)
    )
    np.testing.assert_array_equal(
        kd.prefix_mask(2, 4)[0], np.broadcast_to(j < 2, (4, 4))
    )
    np.testing.assert_array_equal(
        kd.span_attention_mask(2, 1, 4)[0],
        np.broadcast_to((1 <= j) & (j < 3), (4, 4)),
    )
    np.testing.assert_array_equal(
        kd.bidirectional_mask(4, 2)[0], np.ones((4, 2))
    )


def test_window_conventions():
    # Keras' sliding_window=W is window(W-1, W-1); a causal window of W keys
    # including self is causal & window(W-1).
    causal_window = kd.parse_pattern("causal & window(2)").mask(6)[0]
    assert np.asarray(causal_window).sum(axis=1).tolist() == [1, 2, 3, 3, 3, 3]


def test_cache_offset_matches_the_full_causal_mask():
    full = np.asarray(kd.causal_mask(8))
    tail = np.asarray(kd.causal_mask(3, 8, offset=5))
    np.testing.assert_array_equal(tail, full[:, 5:, :])


def test_padding_and_length_masks():
    ids = np.array([[4, 2, 2], [2, 2, 2]])
    np.testing.assert_array_equal(
        kd.padding_mask(ids, pad_id=2), [[True, False, False], [False] * 3]
    )
    np.testing.assert_array_equal(
        kd.length_mask(np.array([0, 2, 9]), 3),
        [[False] * 3, [True, True, False], [True] * 3],
    )


def test_span_token_mask_clips_out_of_range_values():
    got = kd.span_token_mask(np.array([2, 9, -3, 2]), np.array([3, 1, 0, 9]), 4)
    np.testing.assert_array_equal(
        got,
        [
            [False, False, False, True],
            [False, True, True, True],
            [False] * 4,
            [False] * 4,
        ],
    )


def test_span_accepts_a_variable():
    length = keras.Variable(2, dtype="int32", trainable=False)
    pattern = kd.parse_pattern("span(1, 0)")
    assert np.asarray(kd.span_attention_mask(length, 1, 4))[0, 0].tolist() == [
        False,
        True,
        True,
        False,
    ]
    length.assign(3)
    assert np.asarray(kd.span_attention_mask(length, 1, 4))[0, 0].sum() == 3
    assert pattern.required_inputs() == frozenset()


_LEAVES = (
    st.sampled_from(
        [
            patterns.Causal(),
            patterns.Backward(),
            patterns.Bidirectional(),
            patterns.Segment(),
            patterns.Prefix(),
            patterns.Span(),
        ]
    )
    | st.builds(patterns.Window, st.integers(0, 4), st.integers(0, 4))
    | st.builds(
        patterns.Window,
        st.integers(0, 4),
        st.integers(0, 1),
        st.sampled_from(["local", "wide"]),
    )
    | st.builds(patterns.Prefix, st.integers(0, 6))
    | st.builds(patterns.Span, st.integers(0, 6), st.integers(0, 6))
)

PATTERNS = st.recursive(
    _LEAVES,
    lambda children: (
        st.builds(patterns.Not, children)
        | st.builds(lambda a, b: a & b, children, children)
        | st.builds(lambda a, b: a | b, children, children)
    ),
    max_leaves=5,
)


@given(
    pattern=PATTERNS,
    query_length=st.integers(1, 7),
    extra_keys=st.integers(0, 3),
    offset=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_random_compositions_equal_oracle(
    pattern, query_length, extra_keys, offset, seed
):
    rng = np.random.default_rng(seed)
    key_length = query_length + extra_keys
    inputs = {
        "segment_ids": np.sort(rng.integers(0, 3, (2, query_length)), 1),
        "key_segment_ids": np.sort(rng.integers(0, 3, (2, key_length)), 1),
        "prefix_length": rng.integers(0, key_length + 2, 2),
        "span_length": rng.integers(0, key_length + 2, 2),
        "span_position": rng.integers(0, key_length + 2, 2),
    }
    got = pattern.mask(query_length, key_length, offset, **inputs)
    got = np.broadcast_to(np.asarray(got), (2, query_length, key_length))
    want = oracle_mask(pattern, query_length, key_length, offset, 2, **inputs)
    np.testing.assert_array_equal(got, want, err_msg=str(pattern))
    future = ~np.asarray(kd.causal_mask(query_length, key_length, offset))
    if pattern.hides_future():
        assert not np.any(want & future), str(pattern)
    # The algebra's invariants, on the same batch.
    assert kd.parse_pattern(str(pattern)) == pattern
    assert np.array_equal(
        np.broadcast_to(
            np.asarray(
                (~~pattern).mask(query_length, key_length, offset, **inputs)
            ),
            want.shape,
        ),
        want,
    )
    assert not np.any(
        np.asarray(
            (pattern & patterns.Causal()).mask(
                query_length, key_length, offset, **inputs
            )
        )
        & ~np.asarray(kd.causal_mask(query_length, key_length, offset))
    )


@pytest.mark.parametrize("text", KINDS + COMPOSITIONS)
def test_text_and_config_round_trip(text):
    pattern = kd.parse_pattern(text)
    assert kd.parse_pattern(str(pattern)) == pattern
    config = keras.saving.serialize_keras_object(pattern)
    again = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(config)), safe_mode=True
    )
    assert again == pattern
    assert json.dumps(keras.saving.serialize_keras_object(again)) == json.dumps(
        config
    )
    assert type(pattern).from_config(pattern.get_config()) == pattern


def test_printing_keeps_precedence():
    c, b, w = patterns.Causal(), patterns.Backward(), patterns.Window(2)
    assert str(c & (b | w)) == "causal & (backward | window(2))"
    assert str(c & b | w) == "causal & backward | window(2)"
    assert str(~(c & b)) == "~(causal & backward)"
    assert str(c & b & w) == "causal & backward & window(2)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("causal &", "expected a pattern word at the end"),
        ("causl", "unknown pattern word 'causl'"),
        ("window", "window takes 1 or 2 int arguments"),
        ("window(1, 2, 3)", "window takes 1 or 2 int arguments"),
        ("causal(3)", "causal takes 0 int arguments"),
        ("span(1)", "span takes 0 or 2 int arguments"),
        ("(causal", "expected ')'"),
        ("causal ^ backward", "unexpected '^'"),
        ("window(-1)", "expected an int, found '-'"),
        ("window(x)", "expected an int, found 'x'"),
    ],
)
def test_bad_text_names_the_problem(text, message):
    with pytest.raises(ValueError, match="Cannot parse pattern=") as error:
        kd.parse_pattern(text)
    assert message in str(error.value)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match=r"left must be an int >= 0.*left=-1"):
        patterns.Window(-1)
    with pytest.raises(ValueError, match=r"length=-2"):
        patterns.Span(-2, 0)
    with pytest.raises(ValueError, match=r"left=2.5"):
        patterns.Window(2.5)
    with pytest.raises(ValueError, match="compose patterns only with patterns"):
        patterns.Causal() & "window(3)"
    with pytest.raises(ValueError, match="received patterns\\[0\\]=3"):
        3 | patterns.Causal()
    with pytest.raises(ValueError, match="pattern=5"):
        kd.MultiHeadAttention(2, 4, pattern=5)
    with pytest.raises(ValueError, match="left=-1"):
        kd.window_mask(-1, query_length=3)
    with pytest.raises(ValueError, match=r"length=-1"):
        kd.span_attention_mask(-1, 0, 3)
    with pytest.raises(ValueError, match="needs the per-example input"):
        kd.parse_pattern("causal | prefix").mask(3)
    with pytest.raises(ValueError, match="Unknown pattern input 'segments'"):
        kd.parse_pattern("segment").mask(3, segments=np.zeros((1, 3), "int32"))


@pytest.mark.parametrize(
    ("segment_ids", "message"),
    [
        (np.zeros((1, 3), "float32"), "integer dtype, received segment_ids"),
        (np.zeros((1, 3, 1), "int32"), r"rank 2, received segment_ids"),
        (np.zeros((3,), "int32"), r"rank 2, received segment_ids"),
    ],
)
def test_bad_segment_ids(segment_ids, message):
    with pytest.raises(ValueError, match=message):
        kd.segment_mask(segment_ids)


def test_bad_pad_id_and_token_ids():
    with pytest.raises(ValueError, match="pad_id=0.5"):
        kd.padding_mask(np.zeros((1, 2), "int32"), pad_id=0.5)
    with pytest.raises(ValueError, match="pad_id='0'"):
        kd.PaddingMask(pad_id="0")
    with pytest.raises(ValueError, match="token_ids with dtype float32"):
        kd.padding_mask(np.zeros((1, 2), "float32"))


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("causal", True),
        ("~backward", True),
        ("causal & window(2)", True),
        ("window(3, 0)", True),
        ("causal | prefix(1)", True),
        ("~~causal", True),
        ("~(backward | segment)", True),
        ("causal & span", True),
        ("causal | ~window(20)", False),
        ("causal | prefix(2)", False),
        ("causal | prefix", False),
        ("window(3, 1)", False),
        ("~causal", False),
        ("~window(1, 0)", False),
        ("segment", False),
        ("bidirectional", False),
    ],
)
def test_hides_future_is_decided_from_the_words(text, hidden):
    pattern = kd.parse_pattern(text)
    assert pattern.hides_future() is hidden
    if hidden:  # a guarantee: at no length is a later key visible
        for length in (1, 5, 40):
            inputs = {
                "segment_ids": np.zeros((1, length), "int32"),
                "span_length": np.array([length]),
                "span_position": np.array([0]),
                "prefix_length": np.array([length]),
            }
            mask = np.asarray(pattern.mask(length, length, 0, **inputs))
            assert not np.triu(mask[0], k=1).any()


def test_hides_future_reads_a_held_window_value():
    pattern = kd.parse_pattern("window(3, 0)")
    assert pattern.hides_future({"window_3_0_right": 0})
    assert not pattern.hides_future({"window_3_0_right": 2})


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("causal", True),
        ("~backward", True),
        ("~bidirectional", True),
        ("causal & window(2)", True),
        ("causal & ~window(3, 0)", True),
        ("causal | ~backward", True),
        ("window(3, 0)", False),  # a schedule may widen its right side
        ("causal | prefix(1)", False),  # or lengthen the prefix
        ("causal | span(0, 2)", False),
        ("~~window(2, 0)", False),
        ("causal | window(1, 0)", False),
    ],
)
def test_hides_future_whatever_the_held_values(text, hidden):
    """With `held_unknown`, the answer holds for any value a layer's
    variables take: what ALiBi's per-key bias under `causal` relies on."""
    pattern = kd.parse_pattern(text)
    assert pattern.hides_future(held_unknown=True) is hidden
    if hidden:
        return
    names = {
        name
        for leaf in pattern.leaves()
        for name in leaf.variable_names().values()
    }
    widened = {name: 5 for name in names}
    assert names and not pattern.hides_future(widened)


@pytest.mark.parametrize(
    "text, names",
    [
        ("window(2)", ["window_2_left", "window_2_right"]),
        ("window(2, 1)", ["window_2_1_left", "window_2_1_right"]),
        ("window(2, name=local)", ["local_left", "local_right"]),
        ("prefix(3)", ["prefix_3_length"]),
        ("span(2, 1)", ["span_2_1_length", "span_2_1_position"]),
        ("prefix", []),
        ("causal", []),
    ],
)
def test_variable_names_come_from_the_word(text, names):
    (leaf,) = kd.parse_pattern(text).leaves()
    assert sorted(leaf.variable_names().values()) == names


def test_named_words_print_parse_and_serialize():
    pattern = patterns.Causal() & patterns.Window(2, 1, name="local")
    assert str(pattern) == "causal & window(2, 1, name=local)"
    assert kd.parse_pattern(str(pattern)) == pattern
    assert kd.parse_pattern("window(2, name=a)") != kd.parse_pattern(
        "window(2, name=b)"
    )
    config = keras.saving.serialize_keras_object(pattern)
    again = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(config)), safe_mode=True
    )
    assert again == pattern
    with pytest.raises(ValueError, match=r"name='2x'"):
        patterns.Window(1, name="2x")
    with pytest.raises(ValueError, match="causal takes no name"):
        kd.parse_pattern("causal(name=x)")
    with pytest.raises(ValueError, match="expected a name"):
        kd.parse_pattern("window(1, name=3)")


def test_every_mask_function_needs_its_query_length():
    """One rule: no function guesses `T` (window_mask once gave 1 x 1)."""
    for function, arguments in [
        (kd.causal_mask, ()),
        (kd.backward_mask, ()),
        (kd.bidirectional_mask, ()),
        (kd.window_mask, (2,)),
        (kd.prefix_mask, (1,)),
        (kd.span_attention_mask, (1, 0)),
    ]:
        with pytest.raises(TypeError, match="query_length"):
            function(*arguments)


TOKEN_MASKS = {
    "padding_mask": lambda f: f(np.array([[5, 6, 0], [5, 0, 0]])),
    "length_mask": lambda f: f(np.array([1, 2]), 3),
    "span_token_mask": lambda f: f(np.array([1, 2]), 0, 3),
}
ATTENTION_MASKS = {
    "causal_mask": lambda f: f(3, 4, offset=np.array([0, 1])),
    "backward_mask": lambda f: f(3, 4, offset=np.array([0, 1])),
    "bidirectional_mask": lambda f: f(3, 4, offset=np.array([0, 1])),
    "window_mask": lambda f: f(np.array([1, 2]), query_length=3, key_length=4),
    "prefix_mask": lambda f: f(np.array([1, 2]), 3, 4),
    "span_attention_mask": lambda f: f(np.array([1, 2]), 0, 3, 4),
    "segment_mask": lambda f: f(
        np.array([[1, 1, 2], [1, 2, 2]]), np.array([[1, 1, 2, 2]] * 2)
    ),
    "merge_masks": lambda f: f(
        kd.causal_mask(3, 4), np.ones((2, 3), bool), np.ones((2, 4), bool)
    ),
}


def test_a_mask_function_says_which_kind_it_returns():
    """Token masks `(B, T)`, attention masks `(B, T, S)`: the docstring's
    first words say which, and a name shared by both kinds (span) says it
    too."""
    assert sorted([*TOKEN_MASKS, *ATTENTION_MASKS]) == sorted(
        name
        for name, value in vars(kd.masks).items()
        if callable(value)
        and not name.startswith("_")
        and value.__module__ == kd.masks.__name__
    )
    for name, call in TOKEN_MASKS.items():
        function = getattr(kd, name)
        assert function.__doc__.startswith("Token mask `(B, T)`"), name
        assert keras.ops.shape(call(function)) == (2, 3), name
    for name, call in ATTENTION_MASKS.items():
        function = getattr(kd, name)
        assert function.__doc__.startswith("Attention mask"), name
        assert keras.ops.shape(call(function)) == (2, 3, 4), name
        assert not name.startswith(("span_token", "padding", "length"))
