"""Where a replica's rows sit in the global batch, under `tf.distribute`.

Masks are keyed by (seed, step, row), the row counted in the *global*
batch: under `MirroredStrategy` or `MultiWorkerMirroredStrategy` each
replica holds a slice of the global batch (replica 0 the first rows,
replica 1 the next, ...), so it numbers its rows from the number of rows
the replicas before it hold. Replicas then draw different masks, and a
run on N replicas draws the masks of one device given the same global
batch. Losses averaged over selected tokens divide by the global count, so
that the replicas' gradients sum to the one-device gradient.

TensorFlow is the only backend with replica contexts; JAX's
`keras.distribution` runs one global program (rows are already global),
and there every function here is the identity.
"""

import keras
from keras import ops


def _replica_context():
    """The replica context of a `tf.distribute` strategy with more than one
    replica in sync, else `None`."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def first_row(batch_size, dtype):
    """The global index of this replica's first row: the rows the replicas
    before it hold (0 outside a distributed step).

    Args:
        batch_size: scalar int tensor, this replica's rows.
        dtype: the dtype of the result.
    """
    context = _replica_context()
    if context is None:
        return ops.zeros((), dtype)
    import tensorflow as tf

    sizes = context.all_gather(tf.reshape(tf.cast(batch_size, dtype), [1]), 0)
    before = tf.range(tf.size(sizes)) < context.replica_id_in_sync_group
    return tf.reduce_sum(tf.where(before, sizes, tf.zeros_like(sizes)))


def sum_over_replicas(value):
    """`value` summed over the replicas in sync (itself outside a
    distributed step)."""
    context = _replica_context()
    if context is None:
        return value
    return context.all_reduce("sum", value)


def replica_count():
    """How many replicas run in sync: the number Keras divides each
    replica's loss by before their gradients are summed."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync
