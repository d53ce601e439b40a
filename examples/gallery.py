"""Draws the README's gallery: one picture per mask kind (`make pictures`).

python examples/gallery.py [--output docs/gallery]
"""

import argparse
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PATTERNS = {
    "causal": "causal",
    "backward": "backward",
    "bidirectional": "bidirectional",
    "window": "window(2)",
    "causal_window": "causal & window(2)",
    "prefix_lm": "causal | prefix",
    "segment": "segment",
    "span": "span(3, 2)",
    "segment_not_span": "segment & ~span(2, 3)",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="docs/gallery")
    args = parser.parse_args()
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)

    import numpy as np

    import keras_dynmask as kd
    from keras_dynmask.app import viz

    length = 8
    segments = np.array([[0, 0, 0, 1, 1, 1, 1, 1]], "int32")
    padding = np.arange(length) < 7  # the last position is padding
    for name, text in PATTERNS.items():
        mask = kd.parse_pattern(text).mask(
            length, segment_ids=segments, prefix_length=np.array([3])
        )
        figure = viz.plot_attention_mask(
            np.asarray(mask)[0],
            title=f"{text} (+ padding)",
            query_mask=padding,
            key_mask=padding,
        )
        viz.save(figure, output / f"{name}.png")

    ids = np.array(
        [
            [5, 6, 7, 8, 9, 10, 0, 0],
            [5, 6, 7, 8, 9, 10, 11, 12],
            [5, 6, 7, 0, 0, 0, 0, 0],
        ],
        "int32",
    )
    x = kd.PaddingMask()(ids)
    x = kd.SpanTokenMask(length=2, position=1, mode="hide")(x)
    viz.save(
        viz.plot_token_masks(
            kd.get_keras_mask(x),
            title="PaddingMask, then SpanTokenMask(2, 1, hide)",
            padding=ids == 0,
        ),
        output / "token_masks.png",
    )
    masking = kd.TokenMasking(
        50, mask_token_id=1, selection_rate=0.5, max_selections=8, seed=3
    )
    out = masking(ids, training=True)
    viz.save(
        viz.plot_masked_lm(
            ids,
            out["token_ids"],
            out["mask"],
            mask_token_id=1,
            title="TokenMasking, selection rate 0.5 (80/10/10)",
        ),
        output / "masked_lm.png",
    )
    print(f"Wrote {len(PATTERNS) + 2} pictures to {output}")


if __name__ == "__main__":
    main()
