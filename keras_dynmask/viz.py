"""Pictures of masks (matplotlib)."""

import numpy as np


def plot_attention_mask(mask, title=None, ax=None):
    """Draws a `(T, S)` attention mask: dark cells are visible keys.

    Args:
        mask: bool array-like `(T, S)`.
        title: str or `None`. Title above the picture.
        ax: a matplotlib `Axes` to draw on, or `None` for a new figure.

    Returns:
        The matplotlib `Figure`.
    """
    from matplotlib import colors
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(
            f"mask must be a (T, S) array, received mask with shape "
            f"{mask.shape}"
        )
    if ax is None:
        rows, cols = mask.shape
        size = (max(3.0, 0.35 * cols + 1.5), max(2.5, 0.35 * rows + 1.2))
        ax = Figure(figsize=size, layout="constrained").add_subplot()
    cmap = colors.ListedColormap(["#f2f2f2", "#1f5fa8"])
    ax.imshow(mask, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
    ax.set_xticks(range(mask.shape[1]))
    ax.set_yticks(range(mask.shape[0]))
    ax.tick_params(labelsize=7)
    ax.set_xticks(np.arange(-0.5, mask.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, mask.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    ax.legend(
        handles=[
            Patch(color=cmap(1), label="visible"),
            Patch(color=cmap(0), label="hidden"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def save_attention_mask(mask, path, title=None):
    """Writes `plot_attention_mask(mask, title)` to a PNG file at `path`."""
    figure = plot_attention_mask(mask, title=title)
    figure.savefig(path, dpi=120)
    return path
