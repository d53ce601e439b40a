"""The README's Python example runs as written, and its model works."""

import pathlib
import re

import numpy as np

import keras_dynmask as kd

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no Python example"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    model = namespace["model"]
    ids = np.array([[5, 6, 7, 8, 1, 1], [5, 6, 1, 1, 1, 1]], "int32")
    segments = np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], "int32")
    logits = model([ids, segments])
    assert logits.shape == (2, 6, 30000)
    # Padding (id 1) and the hidden span (positions 0..2) are masked.
    want = (ids != 1) & (np.arange(6) >= 3)[None]
    np.testing.assert_array_equal(kd.get_keras_mask(logits), want)
