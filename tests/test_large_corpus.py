"""A corpus larger than the memory a process may use: `pretrain` streams
it under an address-space cap set below what reading it whole would need,
and its peak memory does not grow with the corpus (`make test-long`)."""

import os
import pathlib
import re
import resource
import subprocess
import sys

import numpy as np
import pytest

from tests.test_pretraining import TINY
from tests.test_pretraining import _cli_settings

pytestmark = [pytest.mark.long, pytest.mark.tensorflow_only]
MB = 2**20
HERE = pathlib.Path(__file__).parent


def _text(megabytes, seed=0):
    """Paragraphs of generated sentences over a 2,000-word vocabulary."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{n}" for n in range(2000)])
    paragraphs, size = [], 0
    while size < megabytes * MB:
        sentences = rng.choice(words, (int(rng.integers(1, 6)), 12))
        paragraph = " ".join(" ".join(s) + "." for s in sentences)
        paragraphs.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(paragraphs) + "\n\n"


def _run_measured(arguments, cap=None):
    """Runs `keras-dynmask ARGUMENTS`, its address space capped at `cap`
    bytes if given; returns its exit code, its output, its peak resident
    memory and its peak address space, in bytes."""
    # Two malloc arenas, not one per thread: the address space a run maps
    # then depends on what it holds, not on how many threads it started.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "MALLOC_ARENA_MAX": "2"}

    def capped():
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    process = subprocess.Popen(
        [sys.executable, str(HERE / "peak_memory.py"), *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=capped,
    )
    output = []
    for line in process.stdout:  # read as it comes, so it never blocks
        output.append(line.decode())
    _, status, usage = os.wait4(process.pid, 0)
    output = "".join(output)
    mapped = re.findall(r"^VmPeak (\d+)$", output, re.M)
    return (
        os.waitstatus_to_exitcode(status),
        output,
        usage.ru_maxrss * 1024,
        int(mapped[-1]) if mapped else None,
    )


def test_a_corpus_larger_than_memory_streams_in_bounded_memory(tmp_path):
    chunk = _text(8)
    small, big = tmp_path / "small.txt", tmp_path / "big"
    small.write_text(chunk)
    big.mkdir()
    for index in range(4):
        with open(big / f"part-{index}.txt", "w") as file:
            for _ in range(12):  # 4 files of 96 MB: 384 MB in all
                file.write(chunk)
    corpus_bytes = sum(p.stat().st_size for p in big.iterdir())
    assert corpus_bytes > 350 * MB
    flags = ["--steps-per-epoch=20", "--epochs=1"]
    flags += ["--vocabulary-sample-mb=1", *_cli_settings(TINY)]
    runs = {}
    for name, corpus, extra in [
        ("small", small, ["--stream"]),
        ("big", big, []),  # streamed because it is over 256 MB
    ]:
        # The big run may map 256 MB more than the small one did: less
        # than its corpus, which reading whole would hold, and more.
        cap = runs["small"][3] + 256 * MB if runs else None
        runs[name] = _run_measured(
            ["pretrain", f"--corpus={corpus}", f"--output={tmp_path / name}"]
            + [*flags, *extra],
            cap=cap,
        )
        code, output, _, mapped = runs[name]
        assert code == 0, output[-3000:]
        assert "streamed (never read whole)" in output
        assert mapped is not None and (cap is None or mapped <= cap)
    grown = runs["big"][2] - runs["small"][2]
    print(
        f"peak memory: {runs['small'][2] / MB:.0f} MB on 8 MB, "
        f"{runs['big'][2] / MB:.0f} MB on {corpus_bytes / MB:.0f} MB under "
        f"a cap of {(runs['small'][3] + 256 * MB) / MB:.0f} MB of address "
        f"space (it mapped {runs['big'][3] / MB:.0f} MB)"
    )
    # Reading it whole would take the corpus's size, and more.
    assert grown < 64 * MB, (grown / MB, corpus_bytes / MB)
