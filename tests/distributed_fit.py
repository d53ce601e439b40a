"""Run by test_reliability.py in its own process: MirroredStrategy over two
logical CPU devices needs the devices split before TensorFlow starts."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from helpers import tiny_masked_lm  # noqa: E402


def _model(seed):
    return tiny_masked_lm(mask_token_id=1, unselectable_ids=[1], seed=seed)


def _fit(model, ids):
    # Unshuffled, so both runs see the same global batches.
    history = model.fit(ids, epochs=6, batch_size=32, shuffle=False, verbose=0)
    return history.history["loss"]


def main(seed):
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")]
    )
    rng = np.random.default_rng(0)
    # Every row repeats one token, so masked tokens are predictable.
    ids = np.repeat(rng.integers(4, 50, (256, 1)), 16, axis=1).astype("int32")
    # The same row 16 times: each replica holds 8 of them.
    same = np.repeat(ids[:1], 16, axis=0)
    keras.utils.set_random_seed(seed)
    with strategy.scope():
        model = _model(seed)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(same).batch(16)
    )
    drawn = strategy.run(
        lambda x: model.masking(x, training=True)["mask"],
        args=(next(iter(dataset)),),
    )
    per_replica = [
        np.asarray(t).astype(int).tolist()
        for t in strategy.experimental_local_results(drawn)
    ]
    losses = _fit(model, ids)
    # The same model, seed and global batches on one device.
    keras.utils.set_random_seed(seed)
    alone = _model(seed)
    one_device = alone.masking(same, training=True)["mask"]
    print(
        json.dumps(
            {
                "replicas": strategy.num_replicas_in_sync,
                "masks": per_replica,
                "one_device_masks": np.asarray(one_device).astype(int).tolist(),
                "loss": losses,
                "one_device_loss": _fit(alone, ids),
                "step": int(model.masking.step.numpy()),
            }
        )
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
