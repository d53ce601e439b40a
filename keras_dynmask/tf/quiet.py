"""Loads TensorFlow with its start-up log lines held back.

TensorFlow's C++ core writes device probes ("Could not find cuda drivers",
"oneDNN custom operations are on", "failed call to cuInit") to file
descriptor 2 before `TF_CPP_MIN_LOG_LEVEL` applies. They are held back and
shown only if loading fails. Setting `TF_CPP_MIN_LOG_LEVEL` to 0 or 1
yourself keeps them.
"""

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def held_back_stderr():
    """Holds back what C++ code writes to descriptor 2 inside the block;
    shows it if the block fails."""
    wanted = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = None if wanted in ("0", "1") else os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 to hold back
        saved = None
    if saved is None:
        yield
        return
    with tempfile.TemporaryFile(mode="w+") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_tensorflow():
    """Imports TensorFlow quietly; starts no device, so users can still
    configure devices (`tf.config`) after importing this package."""
    if "tensorflow" in sys.modules:
        return
    with held_back_stderr():
        import tensorflow  # noqa: F401


def start_devices():
    """Runs a first op quietly: TensorFlow probes its devices and logs it.

    For scripts that own their process (the command line, the examples, the
    benchmarks); call it after any `tf.config` device settings.

    Example:

    >>> import keras_dynmask
    >>> keras_dynmask.start_devices()
    """
    with held_back_stderr():
        import tensorflow as tf

        tf.zeros(()) + 0
