"""SpecAugment-style masking: spans inside each example, training only."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_dynmask import LengthMask
from keras_dynmask import SinusoidalPositions
from keras_dynmask import TimeFrequencyMasking
from keras_dynmask import get_keras_mask
from keras_dynmask.layers.embedding import sinusoidal_positions

LENGTHS = np.array([40, 7, 100, 1])


def features(seed=0, channels=16):
    rng = np.random.default_rng(seed)
    # No zeros in the data, so every zero is a hidden feature.
    return rng.uniform(1, 2, (len(LENGTHS), 100, channels)).astype("float32")


def masked(layer, x):
    return layer(LengthMask()(x, lengths=LENGTHS), training=True)


def runs(hidden):
    """The lengths of the runs of True in a 1-D bool array."""
    padded = np.concatenate([[0], hidden.astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return edges[1::2] - edges[::2]


def test_inference_passes_features_and_mask_through():
    x = LengthMask()(features(), lengths=LENGTHS)
    y = TimeFrequencyMasking(seed=0)(x)
    np.testing.assert_array_equal(y, features())
    np.testing.assert_array_equal(get_keras_mask(y), get_keras_mask(x))


def test_time_spans_lie_inside_each_example_and_respect_the_widths():
    layer = TimeFrequencyMasking(
        time_masks=2,
        max_time_width=10,
        max_time_fraction=0.2,
        frequency_masks=0,
        seed=3,
    )
    x = features()
    seen_hidden = 0
    for _ in range(30):
        y = ops.convert_to_numpy(masked(layer, x))
        hidden = (y == 0).all(axis=-1)
        assert ((y == 0) == hidden[..., None]).all()  # whole frames only
        for row, length in enumerate(LENGTHS):
            assert not hidden[row, length:].any()  # never on padding
            widest = min(10, int(length * 0.2))
            spans = runs(hidden[row])
            assert hidden[row].sum() <= 2 * widest
            assert all(span <= 2 * widest for span in spans)
        seen_hidden += hidden.sum()
    assert seen_hidden > 0


def test_frequency_bands_cover_all_frames_and_respect_the_width():
    layer = TimeFrequencyMasking(
        time_masks=0, frequency_masks=2, max_frequency_width=3, seed=1
    )
    for _ in range(20):
        y = ops.convert_to_numpy(masked(layer, features()))
        hidden = y == 0
        channels = hidden.all(axis=1)  # (B, F)
        assert (hidden == channels[:, None, :]).all()
        assert (channels.sum(axis=-1) <= 6).all()


def test_a_fresh_pattern_every_step_and_reproducible_by_seed():
    x = features()

    def patterns(seed):
        layer = TimeFrequencyMasking(seed=seed)
        return [ops.convert_to_numpy(masked(layer, x)) == 0 for _ in range(3)]

    first, again, other = patterns(5), patterns(5), patterns(6)
    assert not np.array_equal(first[0], first[1])
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_mask_survives_into_a_trained_model():
    inputs = keras.Input((None, 8))
    lengths = keras.Input((), dtype="int32")
    x = LengthMask()(inputs, lengths=lengths)
    x = TimeFrequencyMasking(max_frequency_width=2, seed=0)(x)
    x = SinusoidalPositions()(keras.layers.Dense(4)(x))
    outputs = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model([inputs, lengths], outputs)
    model.compile("adam", "mse")
    frames = features(channels=8)
    model.fit([frames, LENGTHS], np.zeros(4), epochs=2, verbose=0)
    # Padding does not change the output: the pooled mask is the length.
    changed = frames.copy()
    changed[0, 40:] = 99.0
    np.testing.assert_allclose(
        model.predict([frames, LENGTHS], verbose=0),
        model.predict([changed, LENGTHS], verbose=0),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_mixed_precision(mixed_policy):
    y = masked(TimeFrequencyMasking(seed=0), features())
    compute_dtype = keras.config.dtype_policy().compute_dtype
    assert keras.backend.standardize_dtype(y.dtype) == compute_dtype
    assert np.isfinite(ops.convert_to_numpy(ops.cast(y, "float32"))).all()


def test_config_round_trip():
    layer = TimeFrequencyMasking(3, 5, 0.5, 1, 4, fill_value=-1.0, seed=2)
    clone = TimeFrequencyMasking.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"time_masks": -1}, "time_masks"),
        ({"max_time_width": 1.5}, "max_time_width"),
        ({"max_time_fraction": 0.0}, "max_time_fraction"),
        ({"max_time_fraction": 1.5}, "max_time_fraction"),
        ({"frequency_masks": "2"}, "frequency_masks"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        TimeFrequencyMasking(**arguments)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="max_frequency_width"):
        TimeFrequencyMasking(max_frequency_width=20)(features(), training=True)
    with pytest.raises(ValueError, match=r"\(batch, frames, channels\)"):
        TimeFrequencyMasking()(np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="even number of features"):
        SinusoidalPositions()(np.zeros((1, 3, 5), "float32"))


def test_sinusoidal_positions_match_the_token_embedding_encodings():
    x = np.zeros((2, 6, 8), "float32")
    y = SinusoidalPositions()(x, offset=np.array([0, 3]))
    expected = sinusoidal_positions(6, 8, np.array([0, 3]))
    np.testing.assert_allclose(y, expected, atol=1e-6)
