"""Which replica is running, under a `tf.distribute` strategy.

Masks are keyed by (seed, step, row); under `MirroredStrategy` every
replica sees rows 0..b of its own share of the batch, so the replica's index
joins the key, or all replicas would draw the same masks. TensorFlow is the
only backend with replica contexts; elsewhere this is always 0.
"""

import keras


def replica_id():
    """This replica's index in its sync group (int or scalar tensor)."""
    if keras.backend.backend() != "tensorflow":
        return 0
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        return 0
    return context.replica_id_in_sync_group
