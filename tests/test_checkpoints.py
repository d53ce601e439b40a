"""StepBackup: checkpoints at any step, written whole or not at all, and a
restore that falls back past an unreadable one."""

import keras
import numpy as np
import pytest

import keras_dynmask as kd
from keras_dynmask import models
from keras_dynmask.app.checkpoints import StepBackup
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids

pytestmark = pytest.mark.tensorflow_only


def _model():
    keras.utils.set_random_seed(0)
    # With dropout, whose generators' states a checkpoint must keep.
    encoder = models.build_encoder(VOCABULARY, **{**SIZES, "dropout": 0.1})
    masking = kd.TokenMasking(
        VOCABULARY, mask_token_id=1, unselectable_ids=[1], seed=0
    )
    model = models.MaskedLM(encoder, masking)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model(padded_ids([4], 8))
    return model


def _states(model):
    return [np.asarray(v) for v in model.variables]


def test_checkpoints_keep_the_two_newest_and_restore_every_variable(tmp_path):
    model = _model()
    backup = StepBackup(tmp_path, steps_per_epoch=5, save_every=2)
    ids = padded_ids([8, 5, 3, 7] * 5, 8)
    model.fit(ids, batch_size=4, epochs=2, callbacks=[backup], verbose=0)
    # Every 2 steps and at each epoch's end (5, 10); the two newest kept.
    assert [p.name for p in backup.checkpoints()] == [
        "step-000000010",
        "step-000000008",
    ]
    again = _model()
    assert backup.restore(again) == 10
    # Weights, optimizer slots, step counters and dropout's seed states.
    for got, want in zip(_states(again), _states(model), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_torn_checkpoint_and_a_killed_write_fall_back_to_the_previous(
    tmp_path,
):
    model = _model()
    backup = StepBackup(tmp_path, steps_per_epoch=3, save_every=3)
    ids = padded_ids([8, 5, 3, 7] * 3, 8)
    model.fit(ids, batch_size=4, epochs=1, callbacks=[backup], verbose=0)
    before = _states(model)
    model.fit(ids, batch_size=4, epochs=1, callbacks=[backup], verbose=0)
    newest = tmp_path / "step-000000006" / "model.weights.h5"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    killed = tmp_path / ".step-000000009.writing"
    killed.mkdir()
    (killed / "model.weights.h5").write_bytes(b"half")
    lines = []
    again = _model()
    assert StepBackup(tmp_path, 3, 3, log=lines.append).restore(again) == 3
    assert len(lines) == 1
    assert lines[0].startswith(
        "Skipped an unreadable checkpoint: step-000000006"
    )
    assert not killed.exists()
    for got, want in zip(_states(again), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # With no readable checkpoint left, a clear error, not a fresh start.
    older = tmp_path / "step-000000003" / "random_states.npz"
    older.write_bytes(b"not an npz file")
    with pytest.raises(ValueError, match="No checkpoint in .* can be read"):
        StepBackup(tmp_path, 3, 3, log=lines.append).restore(_model())


def test_no_backup_restores_nothing(tmp_path):
    model = _model()
    before = _states(model)
    assert StepBackup(tmp_path / "none", 3, 3).restore(model) == 0
    for got, want in zip(_states(model), before, strict=True):
        np.testing.assert_array_equal(got, want)
