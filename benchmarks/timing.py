"""Median wall time of a callable, after warm-up."""

import statistics
import time


def median_seconds(function, repeats, warmup):
    """Calls `function` `warmup` times, then times `repeats` calls.

    `function` must block until its result exists (return numpy or call
    `.numpy()`), so asynchronous execution is not mistaken for speed.
    """
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
