"""The keras-dynmask command line, run as a user runs it."""

import io

import numpy as np

import keras_dynmask as kd
from tests.helpers import run_cli as _run


def test_show_mask_prints_only_the_mask(tmp_path):
    png = tmp_path / "mask.png"
    result = _run(
        "show-mask",
        "segment & (causal | prefix)",
        "--length",
        "6",
        "--prefix",
        "2",
        "--segments",
        "0,0,0,1,1,1",
        "--png",
        str(png),
    )
    assert result.returncode == 0, result.stderr
    want = kd.parse_pattern("segment & (causal | prefix)").mask(
        6,
        segment_ids=np.array([[0, 0, 0, 1, 1, 1]]),
        prefix_length=np.array([2]),
    )
    lines = ["".join(str(int(c)) for c in row) for row in np.asarray(want)[0]]
    assert result.stdout.splitlines() == lines
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_mask_with_keys_and_an_offset():
    result = _run(
        "show-mask",
        "causal",
        "--length",
        "2",
        "--key-length",
        "4",
        "--offset",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["1110", "1111"]


def test_show_mask_reports_bad_input():
    result = _run("show-mask", "causl", "--length", "3")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "unknown pattern word 'causl'" in result.stderr
    result = _run("show-mask", "segment", "--length", "3", "--segments", "0,1")
    assert result.returncode == 2
    assert "--segments needs one id per key position (3), received 2" in (
        result.stderr
    )


def test_show_mask_png_pixels_agree_with_the_text(tmp_path):
    from matplotlib import colors
    from matplotlib import image

    from keras_dynmask.app import viz

    text = "causal & window(2) | span(1, 5)"
    png = tmp_path / "mask.png"
    result = _run("show-mask", text, "--length", "7", "--png", str(png))
    assert result.returncode == 0, result.stderr
    rows = [[c == "1" for c in line] for line in result.stdout.splitlines()]
    pixels = image.imread(png)[..., :3]
    # The same figure drawn here locates each cell's centre in pixels.
    figure = viz.plot_attention_mask(np.array(rows), title=text)
    figure.set_dpi(120)
    figure.savefig(io.BytesIO(), dpi=120)  # lays the figure out as saved
    ax = figure.axes[0]
    height = pixels.shape[0]
    visible = np.array(colors.to_rgb(viz.VISIBLE))
    hidden = np.array(colors.to_rgb(viz.HIDDEN))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            x, y = ax.transData.transform((j, i))
            colour = pixels[int(round(height - y)), int(round(x))]
            want = visible if cell else hidden
            assert np.abs(colour - want).max() < 0.02, (i, j, colour)


def test_show_mask_refuses_a_picture_it_cannot_write(tmp_path):
    missing = _run(
        "show-mask", "causal", "--length", "3", "--png", "/nope/m.png"
    )
    assert missing.returncode == 2
    assert "the folder '/nope' does not exist" in missing.stderr
    kind = _run(
        "show-mask", "causal", "--length", "3", "--png", str(tmp_path / "m.x")
    )
    assert kind.returncode == 2 and "unknown picture type '.x'" in kind.stderr
    assert "Traceback" not in missing.stderr + kind.stderr
