"""Inputs and process helpers shared by the tests."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

VOCABULARY = 50
# A small Transformer for model tests: fast, and big enough to learn.
SIZES = {
    "num_layers": 2,
    "num_heads": 2,
    "hidden_dim": 16,
    "intermediate_dim": 32,
    "dropout": 0.0,
}


def tiny_masked_lm(mask_token_id, unselectable_ids, seed=0, **masking):
    """The masked-LM the distributed tests train, compiled: one block 16
    wide over the test vocabulary, no dropout, a quarter of the tokens
    selected (at most 4 a row); `masking` adds `TokenMasking` arguments."""
    import keras_dynmask as kd
    from keras_dynmask import models

    encoder = models.build_encoder(
        VOCABULARY,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
    )
    masking = kd.TokenMasking(
        VOCABULARY,
        mask_token_id=mask_token_id,
        unselectable_ids=unselectable_ids,
        max_selections=4,
        selection_rate=0.25,
        seed=seed,
        **masking,
    )
    model = models.MaskedLM(encoder, masking)
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    return model


def shifted_score(score, batch, head, query, key):
    """A user's score modifier that reads every index it is given."""
    return score + 0.5 * keras.ops.sin(0.3 * (query - key) + head) + 0.1 * batch


def score_modifiers():
    """Score modifiers of every kind, for two heads, for property tests
    (made when called: the scripts that import this module import the
    package late)."""
    from keras_dynmask.core import scores

    return [
        scores.ALiBi(),
        scores.ALiBi([0.3, 0.7]),
        scores.SoftCap(2.0),
        scores.RelativeBias(8, 16),
        scores.RelativeBias(8, 12, bidirectional=False),
        scores.ScoreFunction(shifted_score),
    ]


def random_tables(modifiers, num_heads, rng):
    """Random weights (not their zeros) for the modifiers that hold some."""
    return {
        name: rng.normal(size=shape).astype("float32")
        for modifier in modifiers
        for name, shape in modifier.weight_shapes(num_heads).items()
    }


def to_numpy(x):
    """`x` as a numpy array, detached from any gradient: under Keras'
    PyTorch backend a layer's output requires grad, and `np.asarray` of it
    fails, as it would for a user."""
    return keras.ops.convert_to_numpy(x)


def padded_ids(lengths, total_length, pad_id=0, seed=0):
    """Token ids `(B, total_length)`: row `b` has `lengths[b]` real tokens."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), total_length), pad_id, "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(2, VOCABULARY, length)
    return ids


def right_padded(rows, pad_id=0):
    """int32 `(len(rows), longest)`: each row of ids, padded on the right."""
    ids = np.full((len(rows), max(map(len, rows))), pad_id, "int32")
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
    return ids


def cut_rows(tokens, lengths):
    """Row `b` of `tokens` as a list, its first `lengths[b]` ids."""
    rows = np.asarray(tokens).tolist()
    return [row[:n] for row, n in zip(rows, lengths, strict=True)]


def input_gradient(function, x):
    """The gradient of the scalar `function(x)` with respect to `x`, as
    numpy, on whichever Keras backend is running."""
    import keras

    backend = keras.backend.backend()
    x = np.asarray(x, "float32")
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(function)(jax.numpy.asarray(x)))
    if backend == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True)
        function(tensor).backward()
        return tensor.grad.numpy()
    import tensorflow as tf

    tensor = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        value = function(tensor)
    return tape.gradient(value, tensor).numpy()


# The command that `pip install` put beside this Python.
COMMAND = os.path.join(os.path.dirname(sys.executable), "keras-dynmask")


def run_cli(*args, timeout=300):
    """Runs the installed `keras-dynmask ARGS` in a new process, as a user
    would."""
    return _run([COMMAND, *args], timeout)


def serve_in_fresh_process(saved_model, signature, feed, imports=""):
    """Calls a SavedModel signature in a process that imports TensorFlow
    (and `imports`) but never this package; returns its outputs as lists
    (strings as text).

    Args:
        saved_model: the version folder.
        signature: the signature's name.
        feed: a Python expression of the keyword arguments, e.g.
            `"token_ids=tf.constant([[2, 5, 3]])"`.
    """
    script = (
        f"import json, sys, tensorflow as tf{imports}\n"
        f"fn = tf.saved_model.load({str(saved_model)!r})"
        f".signatures[{signature!r}]\n"
        f"out = fn({feed})\n"
        "assert not any(m.startswith('keras_dynmask') for m in sys.modules)\n"
        "out = {k: v.numpy().tolist() for k, v in out.items()}\n"
        "print(json.dumps(out, default=lambda b: b.decode('utf-8')))\n"
    )
    run = _run([sys.executable, "-c", script], 300, log_level="3")
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _run(command, timeout, log_level="2"):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": log_level}
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout
    )


def kill_when(command, ready, timeout=300, env=None):
    """Starts `command`, and kills it (`SIGKILL`: no handler, no cleanup,
    as a crash or a preempted machine) as soon as `ready()` is true.

    Returns:
        The process's stderr; fails the test when it ended before `ready()`
        or took longer than `timeout` seconds.
    """
    import tempfile
    import time

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                stderr.seek(0)
                raise AssertionError(
                    f"{command[:3]} ended (rc {process.returncode}) before "
                    f"it was to be killed: {stderr.read()[-3000:]}"
                )
            time.sleep(0.02)
        process.kill()
        assert process.wait() == -9
        stderr.seek(0)
        return stderr.read()


def free_ports(count):
    """Ports free on the loopback interface now."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def run_together(commands, timeout=600, envs=None):
    """Starts `commands` at once (each with its `envs` entry added to the
    environment); returns their `CompletedProcess`es."""
    envs = envs or [{}] * len(commands)
    base = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    processes = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**base, **env},
        )
        for command, env in zip(commands, envs, strict=True)
    ]
    done = []
    try:
        for command, process in zip(commands, processes, strict=True):
            out, err = process.communicate(timeout=timeout)
            done.append(
                subprocess.CompletedProcess(
                    command, process.returncode, out, err
                )
            )
    finally:
        for process in processes:
            process.kill()
    return done
