"""Pictures of masks (matplotlib): attention patterns, token masks, and
masked-LM selections, with padding and replacements in their own colours.

Example:

>>> import keras_dynmask as kd
>>> mask = kd.parse_pattern("causal & window(2)").mask(6).numpy()[0]
>>> figure = kd.viz.plot_attention_mask(mask, title="causal & window(2)")
>>> type(figure).__name__
'Figure'
"""

import numpy as np

VISIBLE = "#1f5fa8"
HIDDEN = "#f2f2f2"
PADDING = "#b9b9b9"
KEPT_TOKEN = "#9ecae1"
MASKED = "#d62728"
RANDOM = "#ff9f1c"
UNCHANGED = "#2ca02c"


def _axes(rows, cols, ax):
    from matplotlib.figure import Figure

    if ax is not None:
        return ax
    size = (max(3.0, 0.35 * cols + 2.2), max(2.2, 0.35 * rows + 1.2))
    return Figure(figsize=size, layout="constrained").add_subplot()


def _grid(ax, codes, colours, labels, xlabel, ylabel, title):
    from matplotlib import colors
    from matplotlib.patches import Patch

    cmap = colors.ListedColormap(colours)
    ax.imshow(
        codes,
        cmap=cmap,
        vmin=-0.5,
        vmax=len(colours) - 0.5,
        interpolation="nearest",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(codes.shape[1]))
    ax.set_yticks(range(codes.shape[0]))
    ax.tick_params(labelsize=7)
    ax.set_xticks(np.arange(-0.5, codes.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, codes.shape[0]), minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    ax.tick_params(which="minor", length=0)
    used = sorted(set(np.unique(codes).tolist()))
    ax.legend(
        handles=[Patch(color=colours[c], label=labels[c]) for c in used],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=9)
    return ax.figure


def plot_attention_mask(
    mask, title=None, ax=None, query_mask=None, key_mask=None
):
    """Draws one `(T, S)` attention mask: query rows, key columns.

    Args:
        mask: bool array-like `(T, S)`.
        title: str or `None`.
        ax: a matplotlib `Axes`, or `None` for a new figure.
        query_mask, key_mask: optional bool `(T,)` / `(S,)`; padding rows
            and columns are drawn in their own colour.

    Returns:
        The matplotlib `Figure`.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(
            f"mask must be a (T, S) array, received mask with shape "
            f"{mask.shape}"
        )
    codes = mask.astype(int)
    if query_mask is not None:
        codes[~np.asarray(query_mask, bool), :] = 2
    if key_mask is not None:
        codes[:, ~np.asarray(key_mask, bool)] = 2
    return _grid(
        _axes(*mask.shape, ax),
        codes,
        [HIDDEN, VISIBLE, PADDING],
        ["hidden", "visible", "padding"],
        "key j",
        "query i",
        title,
    )


def plot_token_masks(mask, title=None, ax=None, padding=None):
    """Draws a batch of `(B, T)` token masks: which positions are visible.

    Args:
        mask: bool array-like `(B, T)` (a propagated Keras mask).
        padding: optional bool `(B, T)`, `True` at padding positions, drawn
            apart from positions a rule hid.

    Returns:
        The matplotlib `Figure`.
    """
    mask = np.atleast_2d(np.asarray(mask, bool))
    codes = mask.astype(int)
    if padding is not None:
        codes[np.atleast_2d(np.asarray(padding, bool))] = 2
    return _grid(
        _axes(*mask.shape, ax),
        codes,
        [HIDDEN, VISIBLE, PADDING],
        ["hidden by a rule", "visible", "padding"],
        "position t",
        "example b",
        title,
    )


def plot_masked_lm(
    token_ids,
    masked_ids,
    selected,
    mask_token_id,
    pad_id=0,
    title=None,
    ax=None,
):
    """Draws masked-LM selections for a batch `(B, T)`.

    Colours: padding, untouched tokens, and selected tokens that became the
    mask token, a random token, or stayed themselves.

    Returns:
        The matplotlib `Figure`.
    """
    token_ids = np.atleast_2d(np.asarray(token_ids))
    masked_ids = np.atleast_2d(np.asarray(masked_ids))
    selected = np.atleast_2d(np.asarray(selected, bool))
    codes = np.ones(token_ids.shape, int)
    codes[token_ids == pad_id] = 0
    codes[selected & (masked_ids == mask_token_id)] = 2
    codes[
        selected & (masked_ids != mask_token_id) & (masked_ids != token_ids)
    ] = 3
    codes[selected & (masked_ids == token_ids)] = 4
    return _grid(
        _axes(*token_ids.shape, ax),
        codes,
        [PADDING, KEPT_TOKEN, MASKED, RANDOM, UNCHANGED],
        [
            "padding",
            "not selected",
            "selected: mask token",
            "selected: random token",
            "selected: kept",
        ],
        "position t",
        "example b",
        title,
    )


def save(figure, path, dpi=120):
    """Writes a figure to a PNG file at `path`."""
    figure.savefig(path, dpi=dpi)
    return path


def save_attention_mask(mask, path, title=None):
    """Writes `plot_attention_mask(mask, title)` to a PNG file at `path`."""
    return save(plot_attention_mask(mask, title=title), path)
