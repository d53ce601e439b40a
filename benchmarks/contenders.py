"""The three attention layers the attention benchmarks compare, sharing
one set of weights, and how far a call raises a process's peak memory."""

import json
import resource
import subprocess
import sys

import keras

import keras_dynmask as kd

HIDDEN, HEADS = 256, 4


def trio(pattern):
    """`(auto, dense, stock)`: ours as it comes, ours with
    `block_size=None`, and stock Keras `MultiHeadAttention`, built for
    hidden size `HIDDEN` in `HEADS` heads with the same weights."""
    keras.utils.set_random_seed(0)
    shape = (1, 8, HIDDEN)
    auto = kd.MultiHeadAttention(HEADS, HIDDEN // HEADS, pattern=pattern)
    dense = kd.MultiHeadAttention(
        HEADS, HIDDEN // HEADS, pattern=pattern, block_size=None
    )
    stock = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)
    for layer in (auto, dense, stock):
        layer.build(shape, shape)
    dense.set_weights(auto.get_weights())
    stock.set_weights([w.numpy() for w in auto.trainable_weights])
    return auto, dense, stock


def peak_in_new_process(module, *args):
    """MiB printed (as JSON, last line) by `python -m module *args`: each
    measurement in a fresh process, so that one's peak does not hide the
    next's."""
    command = [sys.executable, "-m", module, *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rise(warm, measured):
    """MiB by which `measured()` raises the peak resident memory above
    where `warm()` (the same call on a tiny input) left it."""
    warm()
    before = _peak_kib()
    measured()
    return (_peak_kib() - before) / 1024


def _peak_kib():
    """This process's peak resident memory in KiB: `VmHWM`, which starts
    afresh in a new program (`ru_maxrss` keeps the parent's high-water mark
    across fork and exec, so it would read the benchmark's own)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
