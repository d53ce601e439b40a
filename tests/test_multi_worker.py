"""Several machines: MultiWorkerMirroredStrategy with two worker processes
on this machine (loopback addresses only), against one process given the
same global batches."""

import json
import pathlib
import sys

import numpy as np
import pytest

from tests.helpers import free_ports
from tests.helpers import run_together

pytestmark = pytest.mark.tensorflow_only
HERE = pathlib.Path(__file__).parent


def _fit(*which):
    return [sys.executable, str(HERE / "multi_worker_fit.py"), *which]


def test_two_workers_train_as_one_process_on_the_same_global_batches():
    ports = ",".join(map(str, free_ports(2)))
    runs = run_together(
        [_fit("0", ports), _fit("1", ports), _fit("0", "alone")]
    )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    chief, other, alone = (json.loads(r.stdout.splitlines()[-1]) for r in runs)
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["chief"] and not other["chief"]
    # Each replica draws the masks one process draws for its rows of the
    # global batch: rows are numbered globally, never twice the same key.
    assert chief["masks"][0] + other["masks"][0] == alone["masks"][0]
    assert chief["masks"] != other["masks"]
    # The same losses as one process (the last batch of a pass splits
    # unevenly and is evened out with padding rows, which weigh nothing).
    for name in ("loss", "val_loss", "accuracy"):
        np.testing.assert_allclose(chief[name], alone[name], rtol=1e-5)
        assert chief[name] == other[name]
    # Steps are counted once per global step (plus the masks drawn above).
    assert chief["iterations"] == alone["iterations"] == 21
    assert chief["step"] == other["step"] == alone["step"] == 22
    assert chief["weights"] == other["weights"]
    for path, values in chief["weights"].items():
        if path.endswith("key/bias"):
            # No gradient in exact arithmetic (softmax ignores a shift of
            # every score), so Adam turns rounding noise into steps.
            continue
        np.testing.assert_allclose(
            values, alone["weights"][path], atol=1e-5, err_msg=path
        )


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
@pytest.mark.parametrize("replicas", [2, 3])
def test_replica_slices_keep_every_row_in_place(rows, replicas):
    import tensorflow as tf

    from keras_dynmask.tf.distribute import replica_slice

    batch = tf.reshape(tf.range(1, rows * 3 + 1), (rows, 3))
    pieces = [
        replica_slice(batch, r, replicas, pad_id=0).numpy()
        for r in range(replicas)
    ]
    assert len({piece.shape for piece in pieces}) == 1
    stacked = np.concatenate(pieces)
    np.testing.assert_array_equal(stacked[:rows], batch.numpy())
    assert (stacked[rows:] == 0).all()
