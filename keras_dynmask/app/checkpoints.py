"""Backups of a training run at any step, from which a rerun resumes exactly.

Keras' `BackupAndRestore` resumes at an epoch: with `save_freq=N` it
writes mid-epoch, but a rerun restarts that epoch from its first batch
with the mid-epoch weights, repeating steps; and it writes its files in
place, so a kill during a write leaves a torn file (or weights of one
step beside the epoch of another). `StepBackup` keeps, per checkpoint, a
folder `step-NNNNNNNNN/` holding the weights with the optimizer's state,
the random generators' states and the step, written under a hidden name
and renamed whole: a folder with a step's name is complete, and a kill
at any moment leaves the previous checkpoint (the two newest are kept).
The caller restarts the data at the restored step.
"""

import json
import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np

_PREFIX = "step-"


class StepBackup(keras.callbacks.Callback):
    """Backs up training every `save_every` steps and at each epoch's end.

    Call `restore(model)` after `compile` and before `fit`: it loads the
    newest checkpoint (or the one before it, when the newest cannot be
    read) and returns its step, where the caller rejoins its data. Under a
    `tf.distribute` strategy only the worker that should checkpoint
    (the chief) writes; every worker restores from the same folder.

    Args:
        backup_dir: the folder, created when needed.
        steps_per_epoch: int, to save at each epoch's end.
        save_every: int >= 1, steps between checkpoints.
        log: where lines about restoring go.
    """

    def __init__(self, backup_dir, steps_per_epoch, save_every, log=print):
        super().__init__()
        self.backup_dir = pathlib.Path(backup_dir)
        self.steps_per_epoch = int(steps_per_epoch)
        self.save_every = int(save_every)
        self.log = log

    # Writing.

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.save_every == 0 and step % self.steps_per_epoch:
            self.save(step)

    def on_epoch_end(self, epoch, logs=None):
        # After the epoch's validation, whose evaluation-mask counters are
        # state too: a run resumed here skips it.
        self.save(self._step())

    def save(self, step):
        """Writes the checkpoint of `step` (once), then drops all but the
        two newest.

        Every worker of a multi-worker strategy writes (reading mirrored
        variables runs collectives, which all must join); the others write
        to a temporary folder they remove.
        """
        if not _writes_checkpoints(self.model):
            with tempfile.TemporaryDirectory() as elsewhere:
                self._write(pathlib.Path(elsewhere), step)
            return
        target = self.backup_dir / f"{_PREFIX}{step:09d}"
        staging = self.backup_dir / f".{target.name}.writing"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self._write(staging, step)
        if target.exists():  # written before an interruption
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
            _flush(self.backup_dir)
        for old in self.checkpoints()[2:]:
            shutil.rmtree(old, ignore_errors=True)

    def _write(self, folder, step):
        self.model.save_weights(folder / "model.weights.h5")
        with open(folder / "random_states.npz", "wb") as file:
            np.savez(file, *[v.numpy() for v in _random_states(self.model)])
        (folder / "step.json").write_text(json.dumps({"step": step}))
        for path in folder.iterdir():
            _flush(path)

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    # Reading.

    def checkpoints(self):
        """The complete checkpoint folders, newest first."""
        if not self.backup_dir.is_dir():
            return []
        found = [
            path
            for path in self.backup_dir.iterdir()
            if path.name.startswith(_PREFIX)
            and path.name[len(_PREFIX) :].isdigit()
        ]
        return sorted(
            found, key=lambda path: int(path.name[len(_PREFIX) :]), reverse=True
        )

    def restore(self, model):
        """Loads the newest readable checkpoint into `model` (compiled) and
        returns its step, or `0` when there is none."""
        if _writes_checkpoints(model):
            for staging in self.backup_dir.glob(f".{_PREFIX}*.writing"):
                shutil.rmtree(staging, ignore_errors=True)  # a killed write
        failures = []
        for folder in self.checkpoints():
            try:
                step = self._load(model, folder)
            except (OSError, ValueError, KeyError) as error:
                failures.append(f"{folder.name} ({error})")
                continue
            for failure in failures:
                self.log(f"Skipped an unreadable checkpoint: {failure}")
            return step
        if failures:
            raise ValueError(
                f"No checkpoint in {self.backup_dir} can be read: "
                f"{'; '.join(failures)}. Delete the folder to start over"
            )
        return 0

    def _load(self, model, folder):
        step = int(json.loads((folder / "step.json").read_text())["step"])
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(folder / "model.weights.h5")
        states = _random_states(model)
        with np.load(folder / "random_states.npz") as saved:
            if len(saved.files) != len(states):
                raise ValueError(
                    f"it holds {len(saved.files)} random states, the model "
                    f"has {len(states)}"
                )
            for index, variable in enumerate(states):
                variable.assign(saved[f"arr_{index}"])
        restored = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if restored != step:
            raise ValueError(
                f"its optimizer counted {restored} steps, its name says {step}"
            )
        return step


def _random_states(model):
    """The `SeedGenerator` states behind dropout, in the model's own order
    (auto-numbered paths differ between models built in one process).
    Keras' weights files leave them out, so a resumed run would draw the
    dropout masks of step 0 again."""
    return [
        variable
        for variable in model.variables
        if variable.path.endswith("seed_generator_state")
    ]


def _writes_checkpoints(model):
    """Whether this process writes: under TensorFlow's multi-worker
    strategy, the chief alone."""
    if keras.backend.backend() != "tensorflow":
        return True
    return model.distribute_strategy.extended.should_checkpoint


def _flush(path):
    """Makes `path` (a file or a folder) durable before the rename."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
