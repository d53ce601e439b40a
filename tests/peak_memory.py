"""Run by test_large_corpus.py: `keras-dynmask ARGS` in this process, which
says at exit how much address space it ever mapped (`VmPeak`).

python tests/peak_memory.py pretrain --corpus ...
"""

import atexit
import re
import sys


def _report():
    status = open("/proc/self/status").read()
    peak = re.search(r"VmPeak:\s+(\d+) kB", status).group(1)
    sys.stderr.write(f"VmPeak {int(peak) * 1024}\n")


if __name__ == "__main__":
    atexit.register(_report)
    from keras_dynmask.app.cli import main

    sys.exit(main(sys.argv[1:]))
