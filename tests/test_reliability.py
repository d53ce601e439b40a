"""Distributed training, mixed precision, determinism, more properties."""

import json
import pathlib
import sys

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import keras_dynmask as kd
from keras_dynmask import models
from tests.helpers import VOCABULARY
from tests.helpers import _run
from tests.helpers import padded_ids
from tests.test_patterns import PATTERNS

HERE = pathlib.Path(__file__).parent


def _distributed(seed):
    run = _run(
        [sys.executable, str(HERE / "distributed_fit.py"), str(seed)], 600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_replicas_draw_their_own_masks():
    first, again = _distributed(0), _distributed(0)
    assert first["replicas"] == 2
    one, two = (np.array(m) for m in first["masks"])
    # The same rows on both replicas, masked differently...
    assert one.shape == two.shape and not np.array_equal(one, two)
    # ...and a rerun with the same seed draws the same masks: those one
    # device draws for the global batch (rows numbered globally).
    assert first["masks"] == again["masks"]
    assert first["masks"][0] + first["masks"][1] == first["one_device_masks"]
    losses = first["loss"]
    assert losses[-1] < 0.6 * losses[0], losses
    np.testing.assert_allclose(again["loss"], losses, rtol=1e-4)
    # The replicas' losses and gradients add up to one device's.
    np.testing.assert_allclose(first["one_device_loss"], losses, rtol=1e-4)
    # Counted once per step, not once per replica (the probe is a step).
    assert first["step"] == 1 + 6 * 8


@pytest.mark.parametrize(
    "mixed_policy", ["mixed_float16", "mixed_bfloat16"], indirect=True
)
def test_mixed_precision_training_with_empty_and_one_token_rows(mixed_policy):
    keras.utils.set_random_seed(0)
    encoder = models.build_encoder(
        VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    masking = kd.TokenMasking(
        VOCABULARY,
        mask_token_id=1,
        unselectable_ids=[1],
        max_selections=4,
        seed=0,
    )
    model = models.MaskedLM(encoder, masking)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    lengths = np.tile([0, 1, 7, 12], 16)  # all-padding and one-token rows
    ids = padded_ids(lengths, 12)
    history = model.fit(ids, epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(np.isfinite(np.asarray(w)).all() for w in model.weights)
    out = model.predict(ids[:4], verbose=0)
    assert np.isfinite(np.asarray(out["logits"], "float32")).all()


def _masks_in_a_new_process():
    script = (
        "import json, numpy as np, keras_dynmask as kd\n"
        "from tests.helpers import padded_ids\n"
        "layer = kd.TokenMasking(50, 1, max_selections=8, seed=11)\n"
        "ids = padded_ids([9, 4, 12], 12)\n"
        "out = [layer(ids, training=True)['token_ids'].numpy().tolist()"
        " for _ in range(3)]\n"
        "print(json.dumps(out))\n"
    )
    run = _run([sys.executable, "-c", script], 300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_same_seed_gives_bit_identical_masks_across_processes():
    layer = kd.TokenMasking(50, 1, max_selections=8, seed=11)
    ids = padded_ids([9, 4, 12], 12)
    here = [
        layer(ids, training=True)["token_ids"].numpy().tolist()
        for _ in range(3)
    ]
    assert _masks_in_a_new_process() == here
    assert here[0] != here[1]  # every step differs


def test_inference_is_bit_identical_across_calls():
    keras.utils.set_random_seed(0)
    model = models.build_causal_lm(
        VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.2,
    )
    ids = padded_ids([5, 9], 9)
    first = np.asarray(model(ids, training=False))
    for _ in range(3):
        assert np.array_equal(np.asarray(model(ids, training=False)), first)
    assert np.array_equal(model.predict(ids, verbose=0), first)


@given(
    pattern=PATTERNS,
    other=PATTERNS,
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_padding_keys_are_never_visible_and_and_narrows(
    pattern, other, lengths, seed
):
    rng = np.random.default_rng(seed)
    width = max(max(lengths), 1)
    batch = len(lengths)
    inputs = {
        "segment_ids": np.sort(rng.integers(0, 3, (batch, width)), 1),
        "prefix_length": rng.integers(0, width + 2, batch),
        "span_length": rng.integers(0, width + 2, batch),
        "span_position": rng.integers(0, width + 2, batch),
    }
    padding = np.arange(width)[None] < np.array(lengths)[:, None]
    both = np.asarray(
        kd.merge_masks(pattern.mask(width, **inputs), padding, padding)
    )
    assert not both[~np.broadcast_to(padding[:, None, :], both.shape)].any()
    narrowed = np.asarray((pattern & other).mask(width, **inputs))
    wide = np.broadcast_to(
        np.asarray(pattern.mask(width, **inputs)), narrowed.shape
    )
    assert not (narrowed & ~wide).any()
