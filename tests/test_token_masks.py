"""PaddingMask, LengthMask, SpanTokenMask: the token mask Keras propagates."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids
from tests.helpers import to_numpy


def test_padding_mask_on_ids_and_on_embeddings():
    ids = padded_ids([2, 4], 5, pad_id=1)
    on_ids = kd.PaddingMask(pad_id=1)(ids)
    np.testing.assert_array_equal(on_ids, ids)
    np.testing.assert_array_equal(kd.get_keras_mask(on_ids), ids != 1)
    x = keras.layers.Embedding(VOCABULARY, 4)(ids)
    on_x = kd.PaddingMask(pad_id=1)(x, token_ids=ids)
    np.testing.assert_array_equal(to_numpy(on_x), to_numpy(x))
    np.testing.assert_array_equal(kd.get_keras_mask(on_x), ids != 1)


def test_masks_are_anded_and_inputs_left_alone():
    ids = padded_ids([2, 4], 5)
    x = keras.layers.Embedding(VOCABULARY, 4, mask_zero=True)(ids)
    span = kd.SpanTokenMask(length=2, position=1, mode="hide")(x)
    want = (ids != 0) & ~np.isin(np.arange(5), [1, 2])[None]
    np.testing.assert_array_equal(kd.get_keras_mask(span), want)
    np.testing.assert_array_equal(kd.get_keras_mask(x), ids != 0)


def test_length_mask_clips_lengths():
    frames = np.ones((3, 4, 2), "float32")
    y = kd.LengthMask()(frames, lengths=np.array([0, 3, 7]))
    np.testing.assert_array_equal(
        kd.get_keras_mask(y),
        [[False] * 4, [True, True, True, False], [True] * 4],
    )


def test_span_mask_per_example_tensors():
    x = np.zeros((3, 5, 2), "float32")
    y = kd.SpanTokenMask(length=1, position=0)(
        x, length=np.array([2, 0, 9]), position=np.array([3, 1, 2])
    )
    np.testing.assert_array_equal(
        to_numpy(kd.get_keras_mask(y)).astype(int),
        [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 0, 1, 1, 1]],
    )


@pytest.mark.tensorflow_only
def test_span_variables_change_without_retracing():
    import tensorflow as tf

    layer = kd.SpanTokenMask(length=1, position=0)
    traces = []

    @tf.function
    def mask_of(x):
        traces.append(1)
        return kd.get_keras_mask(layer(x))

    x = tf.zeros((1, 6, 2))
    first = mask_of(x).numpy()
    layer.length_variable.assign(3)
    layer.position_variable.assign(2)
    second = mask_of(x).numpy()
    assert len(traces) == 1
    assert first.astype(int).tolist() == [[1, 0, 0, 0, 0, 0]]
    assert second.astype(int).tolist() == [[0, 0, 1, 1, 1, 0]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="length=-1"):
        kd.SpanTokenMask(length=-1, position=0)
    with pytest.raises(ValueError, match="mode='drop'"):
        kd.SpanTokenMask(1, 0, mode="drop")
    with pytest.raises(ValueError, match="pad_id=1.0"):
        kd.PaddingMask(pad_id=1.0)
    with pytest.raises(ValueError, match=r"lengths must have rank 1"):
        kd.LengthMask()(np.zeros((1, 3, 2)), lengths=np.array([[2]]))
