"""Run by test_multi_worker.py: one worker of a MultiWorkerMirroredStrategy
cluster on this machine (loopback), or one process alone, training a
masked-LM encoder with whole-word masking (words from the token ids, as
`pretrain --masking whole-word` does) on the same global batches.

python tests/multi_worker_fit.py INDEX PORT,PORT,...   # a worker
python tests/multi_worker_fit.py 0 alone                # one process

Prints one JSON line: the masks its replica drew for the first global
batch, the losses, the step counters and a digest of the weights.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
INDEX, PORTS = int(sys.argv[1]), sys.argv[2]
if PORTS != "alone":
    workers = [f"localhost:{port}" for port in PORTS.split(",")]
    from keras_dynmask.tf.distribute import cluster_config

    os.environ["TF_CONFIG"] = json.dumps(cluster_config(workers, INDEX))

from keras_dynmask.tf import distribute  # noqa: E402

STRATEGY = distribute.strategy_from_environment()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from helpers import tiny_masked_lm  # noqa: E402

from keras_dynmask.tf import data  # noqa: E402


def main():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    # Rows of 2 to 13 tokens: bucketed batches of 8, some partial.
    sequences = [
        np.concatenate([[2], rng.integers(5, 50, rng.integers(2, 14)), [3]])
        for _ in range(150)
    ]
    with STRATEGY.scope():
        model = tiny_masked_lm(
            mask_token_id=4,
            unselectable_ids=[2, 3, 4],
            # Ids 5, 8, 11, ... continue the word before them.
            continuation_ids=range(5, 50, 3),
        )
        masking = model.masking
        model(np.array([[2, 5, 3]], "int32"))

        def stream():
            return data.training_stream(sequences, 8, seed=0)

        first = next(iter(distribute.replica_batches(stream)))
        drawn = STRATEGY.run(
            tf.function(lambda x: masking(x, training=True)["mask"]),
            args=(first,),
        )
        masks = [
            np.asarray(m).astype(int).tolist()
            for m in STRATEGY.experimental_local_results(drawn)
        ]
        held_out = distribute.replica_batches(
            lambda: data.batched(sequences[:21], 8)
        )
        history = model.fit(
            distribute.replica_batches(stream),
            epochs=3,
            steps_per_epoch=7,
            validation_data=held_out,
            verbose=0,
        )
    print(
        json.dumps(
            {
                "replicas": STRATEGY.num_replicas_in_sync,
                "chief": distribute.is_chief(STRATEGY),
                "masks": masks,
                "loss": history.history["loss"],
                "val_loss": history.history["val_loss"],
                "accuracy": history.history["accuracy"],
                "step": int(masking.step.numpy()),
                "iterations": int(model.optimizer.iterations.numpy()),
                "weights": {
                    w.path: np.asarray(w, "float64").tolist()
                    for w in model.trainable_weights
                },
            }
        )
    )


if __name__ == "__main__":
    main()
