"""Several devices under JAX: `keras.distribution.DataParallel` over two
host devices trains a masked-LM encoder as one device does. Runs under
Keras' JAX backend (`make test-backends`); skipped elsewhere."""

import json
import os
import pathlib
import sys

import keras
import numpy as np
import pytest

from tests.helpers import run_together

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution runs on Keras' JAX backend",
)
HERE = pathlib.Path(__file__).parent


def test_data_parallel_on_two_devices_trains_as_one_device():
    flags = os.environ.get("XLA_FLAGS", "")
    two, one = run_together(
        [[sys.executable, str(HERE / "data_parallel_fit.py")]] * 2,
        envs=[
            {"XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=2"},
            {"XLA_FLAGS": flags},
        ],
    )
    for run in (two, one):
        assert run.returncode == 0, run.stderr[-3000:]
    two, one = (json.loads(r.stdout.splitlines()[-1]) for r in (two, one))
    assert (two["devices"], one["devices"]) == (2, 1)
    assert "'batch': 2" in two["sharded"]
    # Masks are the same function of (seed, step, row) on both.
    assert two["masks"] == one["masks"]
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=1e-5)
    assert two["step"] == one["step"] == 1 + 3 * 8
    for path, values in two["weights"].items():
        if path.endswith("key/bias"):
            # No gradient in exact arithmetic (softmax ignores a shift of
            # every score), so Adam turns rounding noise into steps.
            continue
        np.testing.assert_allclose(
            values, one["weights"][path], atol=1e-5, err_msg=path
        )
