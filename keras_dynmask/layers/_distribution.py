"""Where a replica's rows sit in the global batch, under `tf.distribute`.

Masks are keyed by (seed, step, row), the row counted in the *global*
batch: under `MirroredStrategy` or `MultiWorkerMirroredStrategy` each
replica holds a slice of the global batch (replica 0 the first rows,
replica 1 the next, ...), so it numbers its rows from the number of rows
the replicas before it hold. Replicas then draw different masks, and a
run on N replicas draws the masks of one device given the same global
batch. Losses averaged over selected tokens divide by the global count, so
that the replicas' gradients sum to the one-device gradient, and the logs
are the global batch's.

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


def splits_the_batch():
    """Whether this step runs on one replica's slice of the global batch
    (a `tf.distribute` replica step with more than one replica)."""
    return _replica_context() is not None


def logs_for_keras(logs):
    """A train or test step's logs, shaped so Keras can reduce them.

    Keras 3.15 reduces a multi-worker step's logs with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars
    ("Invalid reduction dimension 0 for input with 0 dimensions",
    tensorflow/tensorflow#72388): under `MultiWorkerMirroredStrategy` each
    log becomes a vector of one value (the same on every replica: metric
    variables sum their updates across replicas), which that reduction
    takes back to a scalar. Elsewhere the logs pass unchanged.
    """
    if keras.backend.backend() != "tensorflow":
        return logs
    import tensorflow as tf

    extended = tf.distribute.get_strategy().extended
    if not getattr(extended, "_in_multi_worker_mode", lambda: False)():
        return logs
    return {name: ops.reshape(value, (1,)) for name, value in logs.items()}


def synced_means(*metrics):
    """Mean metrics' results over all replicas' updates, in a
    `tf.distribute` replica step (where `splits_the_batch()`).

    Keras keeps a metric's totals per replica and logs the mean of the
    replicas' own results, which is not the global mean when the replicas'
    weights differ (slices of different sizes, a different number of
    selected tokens); this sums the totals and the weights first, in one
    all-reduce.

    Args:
        *metrics: `keras.metrics.Mean`s, or any metrics with `total` and
            `count` variables (`MeanMetricWrapper`, accuracy).

    Returns:
        list of scalar tensors, one per metric.
    """
    import tensorflow as tf

    # This replica's own totals, read as tensors: a variable handed to the
    # all-reduce would be reduced as a variable.
    mine = tf.stack(
        [
            tf.cast(tf.identity(variable.value), "float32")
            for metric in metrics
            for variable in (metric.total, metric.count)
        ]
    )
    every = sum_over_replicas(mine)
    return [
        tf.math.divide_no_nan(every[2 * i], every[2 * i + 1])
        for i in range(len(metrics))
    ]
