"""The catalogue of bad inputs in the README: one test per row."""

import warnings

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask import models
from tests.helpers import padded_ids

VOCAB = 50


@pytest.fixture(scope="module")
def encoder():
    keras.utils.set_random_seed(0)
    return models.build_encoder(
        VOCAB, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16
    )


def _embedding():
    return kd.TokenEmbedding(VOCAB, 8)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.zeros((2, 3), "float32"), "integer dtype, received token_ids"),
        (np.array([["a", "b"]]), "token_ids"),
        (np.array([1, 2, 3], "int32"), "rank 2, received token_ids"),
        (np.ones((1, 2, 3), "int32"), "rank (1 or )?2, received token_ids"),
    ],
    ids=["float", "string", "rank-1", "rank-3"],
)
def test_token_ids_of_the_wrong_kind(ids, message):
    layers = [_embedding(), kd.PaddingMask()]
    if ids.ndim != 1:  # TokenMasking takes one sequence (T,) too
        layers.append(kd.TokenMasking(VOCAB, 1, seed=0))
    for layer in layers:
        with pytest.raises(ValueError, match=message):
            layer(ids, training=True) if isinstance(
                layer, kd.TokenMasking
            ) else layer(ids)


def test_empty_batches_and_empty_sequences(encoder):
    assert tuple(encoder(np.zeros((0, 5), "int32")).shape) == (0, 5, 8)
    assert tuple(encoder(np.zeros((2, 0), "int32")).shape) == (2, 0, 8)
    masking = kd.TokenMasking(VOCAB, 1, seed=0)
    for shape in ((0, 4), (2, 0)):
        out = masking(np.zeros(shape, "int32"), training=True)
        assert tuple(out["mask"].shape) == shape
        assert not np.asarray(out["mask_weights"]).any()


def test_all_padding_rows_are_finite_zeros_of_attention(encoder):
    out = np.asarray(encoder(np.zeros((2, 4), "int32")))
    assert np.isfinite(out).all()


def test_ids_outside_the_vocabulary(encoder):
    for bad in (VOCAB, VOCAB + 7, -3):
        ids = np.array([[5, bad, 6]], "int32")
        with pytest.raises(ValueError, match="must be in \\[0, vocabulary"):
            encoder(ids)
        # In a compiled graph they are masked out like padding: the other
        # positions see the same as when the bad id is padding.
        got = encoder.predict(ids, verbose=0)
        padded = encoder.predict(np.array([[5, 0, 6]], "int32"), verbose=0)
        np.testing.assert_allclose(got[0, [0, 2]], padded[0, [0, 2]], atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix_length": np.ones((2, 2), "int32")}, "prefix_length must"),
        ({"prefix_length": np.ones(2, "float32")}, "prefix_length must"),
        ({"segment_ids": np.zeros((2, 5), "int32")}, "one id per query"),
        ({"segment_ids": np.zeros((2, 3), "float32")}, "segment_ids must"),
    ],
    ids=["prefix-rank-2", "prefix-float", "segments-length", "segments-float"],
)
def test_per_example_inputs_of_the_wrong_shape_or_dtype(kwargs, message):
    pattern = "segment" if "segment_ids" in kwargs else "prefix"
    x = np.ones((2, 3, 8), "float32")
    with pytest.raises(ValueError, match=message):
        kd.MultiHeadAttention(2, 4, pattern=pattern)(x, x, **kwargs)


def test_spans_and_prefixes_beyond_the_sequence_are_clipped():
    prefix = kd.parse_pattern("prefix").mask(3, prefix_length=np.array([99]))
    assert np.asarray(prefix).all()
    span = kd.span_token_mask(np.array([50]), np.array([2]), 4)
    np.testing.assert_array_equal(span, [[False, False, True, True]])
    far = kd.span_token_mask(np.array([2]), np.array([40]), 4)
    assert not np.asarray(far).any()


def test_a_model_built_for_one_length_warns():
    ids = keras.Input((16,), dtype="int32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kd.TokenEmbedding(VOCAB, 8)(ids)
        kd.PaddingMask()(ids)
    messages = [str(w.message) for w in caught]
    assert sum("fixed length 16" in m for m in messages) == 2, messages
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kd.TokenEmbedding(VOCAB, 8)(keras.Input((None,), dtype="int32"))
    assert not [w for w in caught if "fixed length" in str(w.message)]


def test_float_ids_given_to_a_functional_model_are_cast_by_keras(encoder):
    # Keras' Input(dtype="int32") casts what it is fed, as for any Keras
    # model; the layers themselves refuse floats (see above).
    ids = padded_ids([3], 4)
    np.testing.assert_allclose(
        encoder(ids.astype("float32")), encoder(ids), atol=1e-6
    )


def test_a_learned_position_table_states_its_maximum():
    layer = kd.TokenEmbedding(VOCAB, 8, positions="learned", max_length=6)
    assert tuple(layer(padded_ids([4], 6)).shape) == (1, 6, 8)
    with pytest.raises(ValueError, match="max_length=6 rows"):
        layer(padded_ids([4], 7))
    with pytest.raises(ValueError, match="reaching position 8"):
        layer(padded_ids([2], 2), offset=6)
    with pytest.raises(ValueError, match="max_length is for positions"):
        kd.TokenEmbedding(VOCAB, 8, max_length=6)
    with pytest.raises(ValueError, match="max_length=None"):
        kd.TokenEmbedding(VOCAB, 8, positions="learned")
    config = layer.get_config()
    assert kd.TokenEmbedding.from_config(config).get_config() == config
