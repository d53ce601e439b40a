"""A model trained on JAX or PyTorch is exported on TensorFlow.

Runs under `make test-backends`; under TensorFlow itself there is nothing
to cross, and the test is skipped.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_dynmask import models
from tests.helpers import SIZES
from tests.helpers import VOCABULARY
from tests.helpers import padded_ids

BACKEND = keras.backend.backend()


@pytest.mark.skipif(
    BACKEND == "tensorflow", reason="crosses from JAX or PyTorch"
)
def test_trained_here_exported_on_tensorflow(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_causal_lm(
        VOCABULARY, pattern="causal & window(3)", **SIZES
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    ids = padded_ids([9, 5, 12, 3] * 4, 12, seed=1)
    history = model.fit(ids[:, :-1], ids[:, 1:], epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "model.keras")
    for length in (1, 7, 40):
        sample = padded_ids([length, max(1, length // 2)], length, seed=length)
        np.save(tmp_path / f"ids_{length:03d}.npy", sample)
        logits = keras.ops.convert_to_numpy(model(sample))
        np.save(tmp_path / f"logits_{length:03d}.npy", logits)

    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    run = subprocess.run(
        [sys.executable, "-m", "tests.cross_backend_export", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    largest = max(report.values())
    print(f"\n{BACKEND} -> TensorFlow, largest difference {largest:.2e}")
    for name, gap in sorted(report.items()):
        print(f"  {name}: {gap:.2e}")
    assert largest < 1e-4, report
