"""Schedules change mask parameters during model.fit, traced once."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask import models
from keras_dynmask.models.schedules import VariableSchedule
from keras_dynmask.models.schedules import linear
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids


class CountingMasking(kd.TokenMasking):
    """Counts how often its training call runs in Python: once per trace
    (Keras' symbolic build of the model calls it in inference mode)."""

    traces = 0

    def call(
        self,
        token_ids,
        word_starts=None,
        training=None,
        mask=None,
        token_ids_mask=None,
    ):
        type(self).traces += bool(training)
        return super().call(
            token_ids, word_starts, training, mask, token_ids_mask
        )


@pytest.mark.tensorflow_only
def test_selection_rate_and_window_change_during_fit_traced_once():
    keras.utils.set_random_seed(0)
    encoder = models.build_encoder(
        VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        pattern="window(1)",
    )
    masking = CountingMasking(
        VOCABULARY,
        mask_token_id=1,
        unselectable_ids=[1],
        max_selections=12,
        seed=0,
    )
    model = models.MaskedLM(encoder, masking)
    model.compile(optimizer="adam")
    block = encoder.get_layer("block_0")
    window = block.pattern_variables
    assert sorted(window) == ["window_1_left", "window_1_right"]

    rates, widths = [0.1, 0.3, 0.5], [1, 2, 4]
    seen = []
    probe = padded_ids([12, 12], 12, seed=1)
    attention = block.self_attention

    traces_at_epoch_end = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            traces_at_epoch_end.append(CountingMasking.traces)
            drawn = masking(probe, training=True)["mask"].numpy().sum(1)
            x = encoder.get_layer("token_embedding")(probe)
            _, weights = attention(x, x, return_attention_scores=True)
            keys = (np.asarray(weights)[0, 0] > 0).sum(-1)
            seen.append((drawn.tolist(), int(keys.max())))

    callbacks = [
        VariableSchedule(
            masking.selection_rate_variable, lambda e: rates[e], per="epoch"
        ),
        *(
            VariableSchedule(v, lambda e: widths[e], per="epoch")
            for v in window.values()
        ),
        Record(),
    ]
    ids = padded_ids([12] * 64, 12)
    model(ids[:16])  # built before counting
    CountingMasking.traces = 0
    model.fit(ids, epochs=3, batch_size=16, verbose=0, callbacks=callbacks)
    # The training step is traced during the first epoch only (twice, as
    # TensorFlow does for any Keras model whose first trace creates
    # variables); the schedule's changes in later epochs retrace nothing:
    # the only later calls are the probes, one per epoch.
    assert traces_at_epoch_end == [2, 3, 4]
    # ceil(rate * 12 candidates) tokens drawn; 2 * width + 1 keys visible.
    assert [s[0] for s in seen] == [[2, 2], [4, 4], [6, 6]]
    assert [s[1] for s in seen] == [3, 5, 9]
    assert int(window["window_1_left"].numpy()) == 4


def test_linear_schedule_and_bad_arguments():
    schedule = linear(0.3, 0.15, steps=3)
    assert schedule(0) == pytest.approx(0.3)
    assert schedule(10) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="steps=0"):
        linear(0.3, 0.15, steps=0)
    variable = keras.Variable(0.1)
    with pytest.raises(ValueError, match="per='step'"):
        VariableSchedule(variable, schedule, per="step")
    with pytest.raises(ValueError, match="schedule=0.5"):
        VariableSchedule(variable, 0.5)


def test_pattern_variables_are_saved_with_the_model(tmp_path):
    ids = keras.Input((None,), dtype="int32")
    x = kd.TokenEmbedding(VOCABULARY, 8)(ids)
    attention = kd.MultiHeadAttention(2, 4, pattern="causal & window(1)")
    model = keras.Model(ids, attention(x, x))
    attention.pattern_variables["window_1_left"].assign(3)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    layer = loaded.layers[-1]
    assert int(layer.pattern_variables["window_1_left"].numpy()) == 3
    probe = padded_ids([6], 6)
    np.testing.assert_allclose(loaded(probe), model(probe), atol=1e-6)
