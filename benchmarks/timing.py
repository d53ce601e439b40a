"""Median wall times of callables, measured interleaved after warm-up."""

import statistics
import time


def median_seconds(function, repeats, warmup):
    """Calls `function` `warmup` times, then times `repeats` calls.

    `function` must block until its result exists (return numpy or call
    `.numpy()`), so asynchronous execution is not mistaken for speed.
    """
    return interleaved_medians({"f": function}, repeats, warmup)["f"]


def interleaved_medians(functions, repeats, warmup, rounds=5):
    """Median seconds per call of each function, measured in `rounds`
    rounds that visit every function in turn, so that a change in the
    machine's load touches all of them alike (these machines are shared).

    Returns:
        `{name: seconds}`.
    """
    for function in functions.values():
        for _ in range(warmup):
            function()
    times = {name: [] for name in functions}
    per_round = max(1, repeats // rounds)
    for _ in range(rounds):
        for name, function in functions.items():
            for _ in range(per_round):
                start = time.perf_counter()
                function()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def calls_at(length, repeats, short=512):
    """How many calls to time at sequence `length`: `repeats`, and 8
    times as many up to `short` positions, where calls of a few
    milliseconds vary more between calls."""
    return repeats * (8 if length <= short else 1)
