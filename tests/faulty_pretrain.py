"""Run by test_faults.py: `keras-dynmask pretrain ARGS` in this process,
killed by `SIGKILL` at a chosen moment of a write.

python tests/faulty_pretrain.py FAULT AT -- ARGS...

FAULT is where the process kills itself, at the AT-th time it gets there:
- `checkpoint-weights`: a checkpoint's weights file half written;
- `checkpoint-rename`: a checkpoint written whole but not yet renamed;
- `export`: a SavedModel written whole but not yet renamed into its
  version folder.
"""

import os
import pathlib
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_dynmask.app import checkpoints  # noqa: E402
from keras_dynmask.app import cli  # noqa: E402

calls = 0


def _reached(at):
    global calls
    calls += 1
    return calls == at


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def main(fault, at, argv):
    if fault == "checkpoint-weights":
        save_weights = keras.Model.save_weights

        def torn(self, filepath, *args, **kwargs):
            save_weights(self, filepath, *args, **kwargs)
            path = pathlib.Path(filepath)
            if path.parent.name.endswith(".writing") and _reached(at):
                with open(path, "r+b") as file:
                    file.truncate(path.stat().st_size // 2)
                _die()

        keras.Model.save_weights = torn
    elif fault == "checkpoint-rename":
        flush = checkpoints._flush

        def unrenamed(path):
            flush(path)
            if pathlib.Path(path).name == "step.json" and _reached(at):
                _die()

        checkpoints._flush = unrenamed
    elif fault == "export":
        replace = os.replace

        def unrenamed(source, target):
            if "-writing-" in pathlib.Path(source).name and _reached(at):
                _die()
            replace(source, target)

        os.replace = unrenamed
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    return cli.main(argv)


if __name__ == "__main__":
    fault, at, separator, *argv = sys.argv[1:]
    assert separator == "--"
    sys.exit(main(fault, int(at), argv))
