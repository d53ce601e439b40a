"""The issue's target rows, collected while the benchmarks run and printed
together at the end of `python -m benchmarks`, each beside its anchor."""

_ROWS = []


def record(benchmark, ours, anchor, target):
    """One row: what was measured, its anchor, and the goal.

    Args:
        benchmark: str, what is compared.
        ours: str, our figure (e.g. "37.0 ms").
        anchor: str, the anchor's figure.
        target: str, the goal for the ratio (e.g. ">= 1.8x faster").
    """
    _ROWS.append((benchmark, ours, anchor, target))


def table():
    """Markdown lines of every recorded row, in the order recorded."""
    lines = [
        "### Targets (issues #16, #17, #20; never slower than stock Keras), "
        "each beside its anchor, from this run",
        "",
        "| benchmark | ours | anchor | target |",
        "|---|---:|---:|---:|",
    ]
    for row in _ROWS:
        lines.append("| " + " | ".join(row) + " |")
    return lines
