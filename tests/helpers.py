"""Small models and inputs shared by the layer tests."""

import numpy as np

VOCABULARY = 50


def padded_ids(lengths, total_length, pad_id=0, seed=0):
    """Token ids `(B, total_length)`: row `b` has `lengths[b]` real tokens."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), total_length), pad_id, "int32")
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(2, VOCABULARY, length)
    return ids
