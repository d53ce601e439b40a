"""Training on several machines with `tf.distribute`: the strategy `TF_CONFIG`
asks for, and batches that every replica slices from one global batch.

Every worker runs the same command. `TF_CONFIG` (JSON, set by the cluster
manager, or written by `cluster_config` from a list of `host:port`) names
the workers and this worker's index; with two or more workers the strategy
is `MultiWorkerMirroredStrategy`, which must be created before TensorFlow
runs its first op. Each worker builds the same global batches (the same
seed, the same stream) and each replica keeps its own slice of every one,
so N replicas train on exactly what one device would with the same global
batch, and the masks, numbered by global row, are the same too.
"""

import json
import os

import tensorflow as tf

from keras_dynmask.tf.quiet import held_back_stderr


def cluster_config(workers, index):
    """The `TF_CONFIG` of worker `index` in a cluster of `workers`.

    Args:
        workers: list of `"host:port"` strings, one per worker, in the same
            order on every worker.
        index: int, this worker's place in `workers` (0 is the chief,
            which writes checkpoints and the model).

    Returns:
        dict, to be written to `os.environ["TF_CONFIG"]` as JSON.
    """
    workers = list(workers)
    for address in workers:
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                "workers must be host:port addresses, received "
                f"workers={','.join(map(str, workers))!r}"
            )
    if len(set(workers)) != len(workers):
        raise ValueError(
            "workers must each be named once, received "
            f"workers={','.join(workers)!r}"
        )
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"worker_index must be an int, received {index!r}")
    if not 0 <= index < len(workers):
        raise ValueError(
            f"worker_index must be in [0, {len(workers)}) for "
            f"{len(workers)} workers, received worker_index={index}"
        )
    return {
        "cluster": {"worker": workers},
        "task": {"type": "worker", "index": index},
    }


def strategy_from_environment():
    """`MultiWorkerMirroredStrategy` when `TF_CONFIG` names two or more
    tasks, else the default strategy (one process, no collectives).

    Call it before TensorFlow runs any op.
    """
    config = os.environ.get("TF_CONFIG")
    if not config:
        return tf.distribute.get_strategy()
    try:
        cluster = json.loads(config).get("cluster", {})
    except (ValueError, AttributeError) as error:
        raise ValueError(
            f"TF_CONFIG is not a JSON object: {config[:200]!r}"
        ) from error
    tasks = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    if tasks < 2:
        return tf.distribute.get_strategy()
    with held_back_stderr():  # its gRPC server logs at start
        return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy=None):
    """Whether this process writes what is shared (checkpoints, the model):
    always outside a multi-worker strategy, else on the chief alone."""
    strategy = strategy or tf.distribute.get_strategy()
    return strategy.extended.should_checkpoint


def replica_batches(make_dataset, strategy=None, pad_id=0):
    """Batches of `make_dataset()` for each replica of `strategy`.

    Args:
        make_dataset: a function that returns a `tf.data.Dataset` of global
            batches of token ids `(B, T)`; every worker calls it and must
            get the same batches.
        strategy: defaults to the current one.
        pad_id: int, for the rows that even out the slices.

    Returns:
        The dataset itself for one replica; else a distributed dataset in
        which each replica holds its slice of every global batch (see
        `replica_slice`).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return make_dataset()

    def for_worker(context):
        local = context.num_replicas_in_sync // context.num_input_pipelines
        first = context.input_pipeline_id * local

        def slices(batch):
            # Local replicas take consecutive elements, in order.
            return tf.data.Dataset.range(local).map(
                lambda j: replica_slice(
                    batch, first + tf.cast(j, tf.int32), replicas, pad_id
                )
            )

        batches = make_dataset()
        dataset = batches.flat_map(slices)
        count = int(batches.cardinality())
        if count >= 0:  # finite and known: Keras stops there, not at an error
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(count * local)
            )
        options = tf.data.Options()
        off = tf.data.experimental.AutoShardPolicy.OFF  # sliced above
        options.experimental_distribute.auto_shard_policy = off
        return dataset.with_options(options)

    return strategy.distribute_datasets_from_function(for_worker)


def replica_slice(batch, replica, replicas, pad_id=0):
    """Replica `replica`'s rows of a global batch `(B, T)`: rows
    `[r * c, (r + 1) * c)` with `c = ceil(B / replicas)`, the last slices
    filled up with rows of `pad_id`, so every replica holds `(c, T)`.

    Equal shapes are what Keras needs (it averages the first batch over the
    replicas to build the model); the padding rows come after every real
    row, so the real rows keep their place in the global batch (the masks
    are those of one device), and, holding no token, they select nothing and
    weigh nothing in the loss.
    """
    rows = tf.shape(batch)[0]
    each = (rows + replicas - 1) // replicas
    first = tf.minimum(replica * each, rows)
    last = tf.minimum(first + each, rows)
    missing = each - (last - first)
    return tf.pad(
        batch[first:last], [[0, missing], [0, 0]], constant_values=pad_id
    )


def worker_batches(make_dataset, strategy=None):
    """Each worker's own batches, from its own share of the data.

    For data too large for every worker to read whole (a streamed corpus,
    sharded by file): `make_dataset(worker, workers)` returns the dataset
    of that worker's share, in batches for one replica; a worker's local
    replicas take consecutive batches. Every replica's batches must have
    one shape (Keras averages the first batch over the replicas to build
    the model): pad them to fixed sizes.

    Returns:
        `make_dataset(0, 1)` for one replica; else a distributed dataset.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return make_dataset(0, 1)

    def for_worker(context):
        dataset = make_dataset(
            context.input_pipeline_id, context.num_input_pipelines
        )
        options = tf.data.Options()
        off = tf.data.experimental.AutoShardPolicy.OFF  # sharded by the caller
        options.experimental_distribute.auto_shard_policy = off
        return dataset.with_options(options)

    return strategy.distribute_datasets_from_function(for_worker)
