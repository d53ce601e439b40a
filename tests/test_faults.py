"""Faults survived: `pretrain` killed (SIGKILL) at random moments, while it
writes a checkpoint and while it exports, then rerun with the same command,
ends with the weights of a run never interrupted, bit for bit, and leaves
no half-written file where a reader would look.

The same for one worker of two (MultiWorkerMirroredStrategy on loopback).
Each kill costs a process start (TensorFlow's import), so these run in
`make test-long`; `make test` kills one run mid-epoch
(test_pretraining.py), restores past a torn checkpoint in-process
(test_checkpoints.py) and trains two workers (test_multi_worker.py).
"""

import pathlib
import random
import sys

import numpy as np
import pytest

from tests.helpers import COMMAND
from tests.helpers import _run
from tests.helpers import free_ports
from tests.helpers import kill_when
from tests.helpers import run_together
from tests.test_pretraining import TINY
from tests.test_pretraining import _checkpoint_steps
from tests.test_pretraining import _cli_settings
from tests.test_pretraining import _weights
from tests.test_pretraining import _write_corpus

pytestmark = pytest.mark.long
HERE = pathlib.Path(__file__).parent
# 19 steps an epoch on the test corpus: 76 in all.
STEPS = 76


def _arguments(corpus, output):
    return [f"--corpus={corpus}", f"--output={output}", "--epochs=4"] + [
        "--save-every=3",
        *_cli_settings(TINY),
    ]


def _pretrain(corpus, output):
    run = _run([COMMAND, "pretrain", *_arguments(corpus, output)], 600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    corpus = _write_corpus(folder)
    output = folder / "model"
    _pretrain(corpus, output)
    return corpus, _weights(output)


def _assert_same_weights(output, expected):
    for got, want in zip(_weights(output), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def _hidden(output):
    return sorted(
        str(path.relative_to(output))
        for path in output.rglob(".*")
        if path.name != ".gitignore"
    )


def test_killed_at_random_moments_ends_as_if_never_killed(
    uninterrupted, tmp_path
):
    corpus, expected = uninterrupted
    output = tmp_path / "model"
    draw = random.Random(0)
    resumed_at = []
    for _ in range(5):
        # Killed once one or two more checkpoints are written (and a few
        # steps later: anywhere in a step or a write).
        last = max(_checkpoint_steps(output), default=0)
        wait = draw.randint(1, 2)
        kill_when(
            [COMMAND, "pretrain", *_arguments(corpus, output)],
            lambda last=last, wait=wait: any(
                step >= last + 3 * wait for step in _checkpoint_steps(output)
            ),
        )
        resumed_at.append(max(_checkpoint_steps(output)))
    stdout = _pretrain(corpus, output)
    assert f"Resuming at step {resumed_at[-1]} of {STEPS}" in stdout, stdout
    assert resumed_at == sorted(resumed_at) and resumed_at[-1] < STEPS
    _assert_same_weights(output, expected)
    assert _hidden(output) == [] and not (output / "backup").exists()


@pytest.mark.parametrize("fault", ["checkpoint-weights", "checkpoint-rename"])
def test_a_kill_while_a_checkpoint_is_written_keeps_the_previous_one(
    uninterrupted, tmp_path, fault
):
    corpus, expected = uninterrupted
    output = tmp_path / "model"
    # The fourth checkpoint (step 12) is torn or never renamed.
    run = _run(
        [sys.executable, str(HERE / "faulty_pretrain.py"), fault, "4", "--"]
        + ["pretrain", *_arguments(corpus, output)],
        600,
    )
    assert run.returncode == -9, run.stderr[-3000:]
    assert sorted(_checkpoint_steps(output)) == [6, 9]
    assert _hidden(output) == ["backup/.step-000000012.writing"]
    stdout = _pretrain(corpus, output)
    assert f"Resuming at step 9 of {STEPS}" in stdout, stdout
    _assert_same_weights(output, expected)
    assert _hidden(output) == []


@pytest.mark.parametrize("at, versions", [(1, ["1"]), (2, ["1", "2"])])
def test_a_kill_during_export_leaves_no_half_written_version(
    uninterrupted, tmp_path, at, versions
):
    """Killed before the ids SavedModel (1) or the text SavedModel (2) is
    renamed into its version folder."""
    corpus, expected = uninterrupted
    output = tmp_path / "model"
    run = _run(
        [sys.executable, str(HERE / "faulty_pretrain.py"), "export", str(at)]
        + ["--", "pretrain", *_arguments(corpus, output)],
        600,
    )
    assert run.returncode == -9, run.stderr[-3000:]
    staged = _hidden(output)
    assert len(staged) == 1 and "-writing-" in staged[0], staged
    numbered = sorted(p.name for p in output.iterdir() if p.name.isdigit())
    assert numbered == versions[:-1]
    assert not (output / "text").exists() or not any(
        p.name.isdigit() for p in (output / "text").iterdir()
    )
    # The rerun finds every step done, trains nothing, and exports again.
    stdout = _pretrain(corpus, output)
    assert f"Resuming at step {STEPS} of {STEPS}" in stdout, stdout
    assert _hidden(output) == []
    assert sorted(p.name for p in output.iterdir() if p.name.isdigit()) == (
        versions
    )
    assert (output / "text" / versions[-1] / "saved_model.pb").exists()
    _assert_same_weights(output, expected)


def _worker(corpus, output, ports, index):
    return [COMMAND, "pretrain", *_arguments(corpus, output), "--dropout=0"] + [
        f"--workers={','.join(f'localhost:{p}' for p in ports)}",
        f"--worker-index={index}",
    ]


def _trainable(folder):
    import keras

    import keras_dynmask  # noqa: F401  (registers the classes)

    model = keras.saving.load_model(folder / "model.keras")
    return {w.path: np.asarray(w) for w in model.trainable_weights}


def test_two_workers_one_killed_mid_epoch_resume_as_if_never_killed(tmp_path):
    """Worker 1 of 2 is killed mid-epoch; the chief, stuck in a collective,
    is killed too (a cluster manager would restart both); the same two
    commands, rerun, end with the uninterrupted run's weights."""
    import subprocess
    import time

    corpus = _write_corpus(tmp_path)
    straight, alone, output = (tmp_path / n for n in ("two", "one", "model"))
    ports = free_ports(2)
    runs = run_together(
        [_worker(corpus, straight, ports, i) for i in range(2)]
        + [[COMMAND, "pretrain", *_arguments(corpus, alone), "--dropout=0"]]
    )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert "Replicas: 2 in sync" in runs[0].stdout
    # Two workers train as one process on the same global batches.
    one = _trainable(alone)
    for path, values in _trainable(straight).items():
        if not path.endswith("key/bias"):  # see test_multi_worker.py
            np.testing.assert_allclose(values, one[path], atol=1e-4)

    ports = free_ports(2)
    workers = [
        subprocess.Popen(
            _worker(corpus, output, ports, i),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 300
    try:
        while not any(step % 19 for step in _checkpoint_steps(output)):
            assert time.monotonic() < deadline
            assert all(w.poll() is None for w in workers)
            time.sleep(0.02)
        workers[1].kill()
        time.sleep(5)  # the chief waits on the dead worker
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert workers[1].returncode == -9
    assert not (output / "model.keras").exists()
    restored = max(_checkpoint_steps(output))
    ports = free_ports(2)
    runs = run_together([_worker(corpus, output, ports, i) for i in range(2)])
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"Resuming at step {restored} of {STEPS}" in run.stdout
    _assert_same_weights(output, _weights(straight))


def _texts(folder):
    """Three files of the test corpus, for a streamed run."""
    folder.mkdir()
    for index in range(3):
        _write_corpus(folder, documents=150, seed=index).rename(
            folder / f"part-{index}.txt"
        )
    return folder


def _streamed(corpus, output):
    return [COMMAND, "pretrain", f"--corpus={corpus}", f"--output={output}"] + [
        "--stream",
        "--steps-per-epoch=12",
        "--epochs=2",
        "--save-every=3",
        "--vocabulary-sample-mb=0.01",
        *_cli_settings(TINY),
    ]


def test_a_streamed_run_killed_mid_epoch_ends_as_if_never_killed(tmp_path):
    """The stream is read again up to the restored step, not held."""
    corpus = _texts(tmp_path / "texts")
    straight, output = tmp_path / "straight", tmp_path / "model"
    run = _run(_streamed(corpus, straight), 600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "streamed (never read whole)" in run.stdout
    kill_when(
        _streamed(corpus, output),
        lambda: any(step % 12 for step in _checkpoint_steps(output)),
    )
    restored = max(_checkpoint_steps(output))
    run = _run(_streamed(corpus, output), 600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"Resuming at step {restored} of 24" in run.stdout
    _assert_same_weights(output, _weights(straight))


def test_two_workers_stream_their_own_files(tmp_path):
    corpus = _texts(tmp_path / "texts")
    output = tmp_path / "model"
    ports = free_ports(2)
    runs = run_together(
        [
            _streamed(corpus, output)
            + [f"--workers=localhost:{ports[0]},localhost:{ports[1]}"]
            + [f"--worker-index={index}"]
            for index in range(2)
        ]
    )
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "each worker reading its own files" in run.stdout
    assert "the chief writes the model" in runs[1].stdout
    assert (output / "model.keras").exists() and (output / "1").exists()
    # Fewer files than workers: said before any training.
    ports = free_ports(2)
    one = tmp_path / "one"
    one.mkdir()
    (corpus / "part-0.txt").rename(one / "part-0.txt")
    runs = run_together(
        [
            _streamed(one, tmp_path / "few")
            + [f"--workers=localhost:{ports[0]},localhost:{ports[1]}"]
            + [f"--worker-index={index}"]
            for index in range(2)
        ],
        timeout=300,
    )
    for run in runs:
        assert run.returncode == 2, run.stderr[-3000:]
        assert "2 workers need at least 2 files" in run.stderr
