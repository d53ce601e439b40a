"""The library under Keras' JAX or PyTorch backend never imports TensorFlow.

`make test-backends` runs this file (and the layer and model tests) in
`.venv-core`, where TensorFlow is not installed at all.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="the TensorFlow backend imports TensorFlow by design",
)

_SCRIPT = """
import sys

# As if TensorFlow were not installed, even where it is: `import` fails
# and `importlib.util.find_spec` answers None (Keras and PyTorch ask).
sys.modules["tensorflow"] = sys.modules["tensorflow_text"] = None
import numpy as np
import keras
import keras_dynmask as kd

ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]], "int32")
encoder = kd.models.build_encoder(
    40, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
    pattern="causal & window(2, name=local)",
)
masking = kd.TokenMasking(40, mask_token_id=1, unselectable_ids=[1], seed=0)
model = kd.models.MaskedLM(encoder, masking)
model.compile(optimizer="adam")
model.fit(np.tile(ids, (8, 1)), epochs=1, batch_size=4, verbose=0)
lm = kd.models.build_causal_lm(40, num_layers=1, hidden_dim=8, num_heads=2)
assert len(kd.generation.generate(lm, [[5, 6], [7]], 3)[0]) == 3
mask = kd.parse_pattern("segment & ~span(1, 0)").mask(
    3, segment_ids=np.array([[0, 0, 1]])
)
assert np.asarray(mask).shape == (1, 3, 3)
loaded = sorted(
    m for m in sys.modules
    if m.split(".")[0] == "tensorflow" and sys.modules[m] is not None
)
print("tensorflow modules:", loaded[:3])
"""


def test_layers_models_and_generation_run_without_tensorflow():
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend()}
    run = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "tensorflow modules: []"


@pytest.mark.skipif(
    not os.environ.get("KERAS_DYNMASK_NO_TENSORFLOW"),
    reason="only in the environment built without TensorFlow",
)
def test_this_environment_really_has_no_tensorflow():
    assert importlib.util.find_spec("tensorflow") is None
