"""What the resumable experiments share (`masking_strategies.py`,
`length_extrapolation.py`): a record of the finished runs, which a rerun
with the same settings resumes from; files written whole or not at all;
`mean ± sd` cells."""

import json
import os


def resumed_runs(record, settings):
    """The runs of an interrupted run with the same settings, or `{}`."""
    if not record.exists():
        return {}
    saved = json.loads(record.read_text())
    if saved.get("settings") != settings:
        return {}
    print(
        f"Resuming: {len(saved['runs'])} runs already in {record} "
        "(delete it to start over)"
    )
    return saved["runs"]


def save_runs(record, settings, runs):
    value = {"settings": settings, "runs": runs}
    write_text(record, json.dumps(value, indent=1) + "\n")


def write_text(path, text):
    """Whole or not at all: a killed write leaves the old file."""
    temporary = path.with_name(f".{path.name}.writing")
    temporary.write_text(text)
    os.replace(temporary, path)


def save_figure(figure, path):
    """A matplotlib figure as a PNG, whole or not at all."""
    temporary = path.with_name(f".{path.name}.writing")
    figure.savefig(temporary, dpi=120, format="png")
    os.replace(temporary, path)


def spread(values, signed=False, digits=3):
    """`mean ± sample standard deviation`."""
    import numpy as np

    deviation = np.std(values, ddof=1) if len(values) > 1 else 0.0
    sign = "+" if signed else ""
    return f"{np.mean(values):{sign}.{digits}f} ± {deviation:.{digits}f}"
