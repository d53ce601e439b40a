"""The `keras-dynmask` command line.

keras-dynmask show-mask "causal & window(2)" --length 6 [--png FILE]
keras-dynmask demo
"""

import argparse
import sys


def _int_list(text):
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ints such as 0,0,1, received {text!r}"
        ) from error


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-dynmask",
        description="Dynamic Transformer masks for Keras.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    show = commands.add_parser(
        "show-mask",
        help="print the T x T mask of a pattern as lines of 0 and 1",
        description="Prints the mask of a pattern, one line per query, "
        "1 where the query sees the key. Nothing else goes to stdout.",
    )
    show.add_argument("expression", help='pattern text, e.g. "causal | prefix"')
    show.add_argument("--length", type=int, required=True, help="T, queries")
    show.add_argument("--key-length", type=int, help="S, keys (defaults to T)")
    show.add_argument(
        "--offset", type=int, default=0, help="absolute position of query 0"
    )
    show.add_argument("--prefix", type=int, help="prefix length for `prefix`")
    show.add_argument(
        "--segments", type=_int_list, help="segment id of each position"
    )
    show.add_argument("--span-length", type=int, help="LEN for `span`")
    show.add_argument("--span-position", type=int, help="POS for `span`")
    show.add_argument("--png", help="also write a picture to this file")

    commands.add_parser(
        "demo",
        help="train a small Transformer with dynamic masks and show them",
    )
    return parser


def _show_mask(args, parser):
    import numpy as np

    import keras_dynmask

    key_length = args.length if args.key_length is None else args.key_length
    if args.length < 1 or key_length < 1:
        parser.error(
            f"--length and --key-length must be >= 1, received "
            f"{args.length} and {key_length}"
        )
    inputs = {}
    if args.segments is not None:
        if len(args.segments) != key_length:
            parser.error(
                f"--segments needs one id per key position ({key_length}), "
                f"received {len(args.segments)}"
            )
        segments = np.array([args.segments], "int32")
        inputs["key_segment_ids"] = segments
        queries = np.arange(args.length) + args.offset
        inputs["segment_ids"] = segments[:, np.clip(queries, 0, key_length - 1)]
    if args.prefix is not None:
        inputs["prefix_length"] = np.array([args.prefix], "int32")
    if args.span_length is not None:
        inputs["span_length"] = np.array([args.span_length], "int32")
    if args.span_position is not None:
        inputs["span_position"] = np.array([args.span_position], "int32")
    try:
        pattern = keras_dynmask.parse_pattern(args.expression)
        mask = pattern.mask(args.length, key_length, args.offset, **inputs)
    except ValueError as error:
        parser.error(str(error))
    mask = np.broadcast_to(np.asarray(mask), (1, args.length, key_length))[0]
    for row in mask:
        print("".join("1" if cell else "0" for cell in row))
    if args.png:
        from keras_dynmask.viz import save_attention_mask

        save_attention_mask(mask, args.png, title=str(pattern))


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    from keras_dynmask import _quiet

    _quiet.start_devices()
    if args.command == "show-mask":
        _show_mask(args, parser)
    elif args.command == "demo":
        from keras_dynmask.demo import run_demo

        run_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
