"""What a newcomer meets first: the README's code runs, the license is there."""

import configparser
import pathlib
import re
import sys

import pytest

from tests.helpers import _run

ROOT = pathlib.Path(__file__).resolve().parent.parent
SNIPPETS = re.findall(
    r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M
)


def test_the_readme_has_code_to_run():
    assert len(SNIPPETS) >= 3


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_every_readme_snippet_runs_as_written(index, tmp_path):
    """Each snippet alone, in a fresh process: no import left out."""
    script = tmp_path / "snippet.py"
    script.write_text(SNIPPETS[index])
    run = _run([sys.executable, str(script)], timeout=300)
    assert run.returncode == 0, f"{SNIPPETS[index]}\n{run.stderr[-2000:]}"


def test_the_license_file_matches_the_metadata():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text
