"""Imports TensorFlow with its start-up log lines held back.

TensorFlow's C++ core writes device probes ("Could not find cuda drivers",
"oneDNN custom operations are on", "failed call to cuInit") to file
descriptor 2 before `TF_CPP_MIN_LOG_LEVEL` applies. They are held back while
TensorFlow loads and shown if loading fails. Setting `TF_CPP_MIN_LOG_LEVEL`
to 0 or 1 yourself keeps them.
"""

import os
import sys
import tempfile


def import_tensorflow():
    wanted = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or wanted in ("0", "1"):
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 to hold back
        return
    with tempfile.TemporaryFile(mode="w+") as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf

            tf.zeros(()) + 0  # the first op probes the devices and logs it
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
