"""Run by test_data_parallel.py under Keras' JAX backend: a masked-LM
encoder trained with `keras.distribution.DataParallel` over the host
devices XLA_FLAGS asks for (`--xla_force_host_platform_device_count=2`),
or on one device when there is one.

Prints one JSON line: the devices, the masks drawn for a batch, the losses,
the step counters and the weights.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from helpers import tiny_masked_lm  # noqa: E402


def main():
    devices = jax.devices("cpu")
    if len(devices) > 1:
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices)
        )
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 16, 64)
    ids = np.zeros((64, 16), "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(5, 50, length)
    model = tiny_masked_lm(mask_token_id=4, unselectable_ids=[4])
    masks = np.asarray(model.masking(ids[:8], training=True)["mask"])
    history = model.fit(
        ids,
        epochs=3,
        batch_size=8,
        shuffle=False,
        validation_data=(ids[:16],),
        verbose=0,
    )
    print(
        json.dumps(
            {
                "devices": len(devices),
                "masks": masks.astype(int).tolist(),
                "loss": history.history["loss"],
                "val_loss": history.history["val_loss"],
                "step": int(np.asarray(model.masking.step)),
                "weights": {
                    w.path: np.asarray(w, "float64").tolist()
                    for w in model.trainable_weights
                },
                "sharded": str(model.trainable_weights[0].value.sharding),
            }
        )
    )


if __name__ == "__main__":
    main()
