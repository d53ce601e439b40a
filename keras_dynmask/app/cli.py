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

    _add_show_mask(commands)
    _add_demo(commands)
    _add_pretrain(commands)
    _add_fill_mask(commands)
    _add_export(commands)
    _add_predict(commands)
    _add_generate(commands)
    return parser


def _add_show_mask(commands):
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


def _add_demo(commands):
    commands.add_parser(
        "demo",
        help="train a small Transformer with dynamic masks and show them",
    )


def _add_pretrain(commands):
    from keras_dynmask.app.pretraining_defaults import DEFAULTS
    from keras_dynmask.app.pretraining_defaults import HELP
    from keras_dynmask.app.pretraining_defaults import MASKINGS

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain a masked-LM encoder with dynamic masking",
        description="Pretrains a masked-LM encoder with RoBERTa's dynamic "
        "masking on the embedded corpus (or --corpus), reports held-out "
        "masked-LM accuracy beside a unigram baseline, saves the model, "
        "and fills a mask. Rerunning the same command after an interruption "
        "(even a kill) resumes from the last checkpoint, at its step.",
    )
    pretrain.add_argument(
        "--corpus", help="a .txt file or a folder of them (default: embedded)"
    )
    pretrain.add_argument(
        "--output",
        default="saved_models/masked_lm",
        help="folder for the model (default: %(default)s)",
    )
    pretrain.add_argument(
        "--steps-per-epoch", type=int, help="default: a full pass"
    )
    pretrain.add_argument(
        "--workers",
        help="host:port of every worker, comma-separated, the same list on "
        "each (writes TF_CONFIG; default: TF_CONFIG if set, else this "
        "process alone)",
    )
    pretrain.add_argument(
        "--worker-index",
        type=int,
        help="this worker's place in --workers (0 is the chief, which "
        "writes the model)",
    )
    pretrain.add_argument(
        "--stream",
        action="store_true",
        help="read --corpus a paragraph at a time on every pass, never "
        "whole (the default for a corpus of over 256 MB); an epoch is then "
        "--steps-per-epoch steps (default 1000)",
    )
    pretrain.add_argument(
        "--vocabulary-sample-mb",
        type=float,
        default=32,
        help="with --stream: MB of the first training documents the "
        "vocabulary is learned from (default: %(default)s)",
    )
    pretrain.add_argument(
        "--save-every",
        type=int,
        default=100,
        help="steps between checkpoints, and one at each epoch's end "
        "(default: %(default)s)",
    )
    for name, value in DEFAULTS.items():
        pretrain.add_argument(
            "--" + name.replace("_", "-"),
            type=float if name == "final_selection_rate" else type(value),
            default=value,
            choices=list(MASKINGS) if name == "masking" else None,
            help=HELP.get(name, "default: %(default)s"),
        )


def _add_fill_mask(commands):
    fill = commands.add_parser(
        "fill-mask",
        help="predict the [MASK] tokens of a text with a pretrained model",
    )
    fill.add_argument("text", help='e.g. "the [MASK] of a list"')
    fill.add_argument(
        "--model",
        default="saved_models/masked_lm",
        help="folder a pretrain run wrote (default: %(default)s)",
    )
    fill.add_argument("--top-k", type=int, default=5)


def _add_export(commands):
    exporter = commands.add_parser(
        "export",
        help="export a .keras model to a SavedModel and/or TFLite",
        description="Writes a SavedModel in TF Serving's layout (DIR/N/, the "
        "next free version N, or --version N), which loads with TensorFlow "
        "alone; with a vocabulary, also a raw-text SavedModel in DIR/text/N/ "
        "(it needs tensorflow_text); and/or a TFLite file with builtin ops "
        "only. Then prints the largest difference of each from Keras.",
    )
    exporter.add_argument("model", help="a .keras file")
    exporter.add_argument(
        "--saved-model",
        help="the model's serving folder (TF Serving's base path, the "
        "folder above the version folders)",
    )
    exporter.add_argument(
        "--version", type=int, help="the SavedModel's version number"
    )
    exporter.add_argument("--tflite", help="a .tflite file to write")
    exporter.add_argument(
        "--quantization",
        choices=["dynamic_range", "float16", "int8"],
        help="TFLite quantization (default: none, float32)",
    )
    exporter.add_argument(
        "--max-length",
        type=int,
        help="a causal LM's or an encoder-decoder's TFLite prefill/decode "
        "cache: positions of (target) prompt and new tokens together "
        "(default: 256)",
    )
    exporter.add_argument(
        "--vocabulary",
        help="vocabulary.txt: adds the raw-text SavedModel and calibrates "
        "int8 on text (default: beside the model, if any)",
    )


def _add_predict(commands):
    predict = commands.add_parser(
        "predict",
        help="run a SavedModel, TFLite or .keras model on text or token ids",
        description="Runs an exported model on one text or one row of ids "
        "and shows the top guesses: per [MASK] for a masked-LM (as "
        "fill-mask does), per position for (T, V) logits, or over a "
        "score vector. A model folder loads its latest version, as TF "
        "Serving does.",
    )
    predict.add_argument(
        "artifact",
        help="a SavedModel version folder, a model folder above its "
        "versions, a .tflite file or a .keras file",
    )
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text to tokenize")
    source.add_argument("--ids", type=_int_list, help="token ids: 2,45,3")
    predict.add_argument(
        "--vocabulary", help="vocabulary.txt (default: found beside)"
    )
    predict.add_argument(
        "--top-k", type=int, default=5, help="guesses shown (default: 5)"
    )
    predict.add_argument(
        "--json",
        action="store_true",
        help='print raw outputs instead: {"token_ids": [[...]], "outputs": '
        "{name: nested lists, batch first}}",
    )


def _add_generate(commands):
    generate = commands.add_parser(
        "generate",
        help="continue prompts with a causal LM or an encoder-decoder "
        "(.keras, SavedModel, TFLite)",
        description="Continues each prompt with a causal language model, or "
        "decodes each --source with an encoder-decoder: from a .keras file "
        "(compiled generation), a SavedModel (its generate signature, as TF "
        "Serving runs it; a model folder loads its latest version) or a "
        ".tflite file (its prefill and decode signatures, as an app runs "
        "them). Greedy unless --top-k or --top-p; with a vocabulary, text "
        "prompts, and rows stop at [SEP]. .keras and SavedModel give the "
        "same tokens; TFLite the same greedy tokens, its samples drawn by "
        "numpy.",
    )
    generate.add_argument(
        "model",
        help="a .keras file, a SavedModel (version folder or the folder "
        "above) or a .tflite file",
    )
    generate.add_argument("prompts", nargs="*", help="texts to continue")
    generate.add_argument(
        "--ids",
        type=_int_list,
        action="append",
        help="a prompt as token ids: 2,45,17 (repeat for more; an "
        "encoder-decoder's target prompt, its start id, and one prompt "
        "serves every source)",
    )
    generate.add_argument(
        "--source",
        type=_int_list,
        action="append",
        help="an encoder-decoder's source as token ids: 7,8,9 (repeat for "
        "more)",
    )
    generate.add_argument(
        "--max-new-tokens", type=int, default=32, help="(default: 32)"
    )
    generate.add_argument(
        "--top-k", type=int, help="sample among the k most likely tokens"
    )
    generate.add_argument(
        "--top-p",
        type=float,
        help="sample among the most likely tokens whose probabilities reach p",
    )
    generate.add_argument(
        "--temperature", type=float, default=1.0, help="(default: 1.0)"
    )
    generate.add_argument("--seed", type=int, default=0, help="(default: 0)")
    generate.add_argument(
        "--end-id",
        type=int,
        help="a row stops after this id (default: [SEP] with a vocabulary)",
    )
    generate.add_argument(
        "--vocabulary", help="vocabulary.txt (default: found beside)"
    )
    generate.add_argument(
        "--json",
        action="store_true",
        help='print {"prompts": [[ids]], "new_token_ids": [[ids]]}',
    )


def _show_mask(args, parser):
    import numpy as np

    import keras_dynmask

    if args.png:
        _check_picture_path(args.png, parser)
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
        from keras_dynmask.app.viz import save_attention_mask

        save_attention_mask(mask, args.png, title=str(pattern))


def _check_picture_path(path, parser):
    """`--png` must name a file in an existing folder, with an extension
    matplotlib writes."""
    import pathlib

    import matplotlib.figure

    path = pathlib.Path(path)
    kinds = matplotlib.figure.Figure().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in kinds:
        parser.error(
            f"--png {str(path)!r}: unknown picture type {path.suffix!r}; "
            f"use one of {', '.join('.' + k for k in sorted(kinds))}"
        )
    if not path.parent.is_dir():
        parser.error(
            f"--png {str(path)!r}: the folder {str(path.parent)!r} does "
            "not exist"
        )


def main(argv=None):
    import signal

    parser = _parser()
    args = parser.parse_args(argv)
    from keras_dynmask.tf import quiet

    strategy = _strategy(args, parser) if args.command == "pretrain" else None
    quiet.start_devices()
    # Ctrl-C while TensorFlow traces can surface as the ValueError of the
    # conversion it broke ("None values not supported"): the handler notes
    # it, so that it reads as the interruption it is.
    interrupted = []

    def interrupt(number, frame):
        interrupted.append(number)
        signal.default_int_handler(number, frame)

    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, interrupt)
    try:
        _run(args, parser, strategy)
    except ValueError as error:
        if not interrupted:
            parser.error(str(error))
        _interrupted(args)
        return 130
    except KeyboardInterrupt:
        _interrupted(args)
        return 130
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
    return 0


def _interrupted(args):
    resume = (
        f"; rerun the same command to resume from the last checkpoint "
        f"(kept in {args.output}/backup)"
        if args.command == "pretrain"
        else ""
    )
    print(f"\nkeras-dynmask {args.command}: interrupted{resume}.")


def _strategy(args, parser):
    """The `tf.distribute` strategy of a `pretrain` run, created before
    TensorFlow's first op (as a multi-worker strategy must be)."""
    import json
    import os

    from keras_dynmask.tf import distribute

    if (args.workers is None) != (args.worker_index is None):
        parser.error("--workers and --worker-index go together")
    try:
        if args.workers is not None:
            config = distribute.cluster_config(
                args.workers.split(","), args.worker_index
            )
            os.environ["TF_CONFIG"] = json.dumps(config)
        return distribute.strategy_from_environment()
    except ValueError as error:
        parser.error(str(error))


def _run(args, parser, strategy=None):
    if args.command == "show-mask":
        _show_mask(args, parser)
    elif args.command == "demo":
        from keras_dynmask.app.demo import run_demo

        run_demo()
    elif args.command == "pretrain":
        from keras_dynmask.app import pretraining
        from keras_dynmask.app.pretraining_defaults import DEFAULTS

        pretraining.pretrain(
            corpus_path=args.corpus,
            output=args.output,
            steps_per_epoch=args.steps_per_epoch,
            save_every=args.save_every,
            strategy=strategy,
            stream=True if args.stream else None,
            vocabulary_sample_mb=args.vocabulary_sample_mb,
            **{name: getattr(args, name) for name in DEFAULTS},
        )
    elif args.command == "fill-mask":
        from keras_dynmask.app import pretraining

        model, tokenizer = pretraining.load(args.model)
        lines = pretraining.fill_mask(
            model, tokenizer, args.text, top_k=args.top_k
        )
        print("\n".join(lines))
    elif args.command == "export":
        from keras_dynmask.app.serving_cli import run_export

        run_export(args)
    elif args.command == "predict":
        from keras_dynmask.app.serving_cli import run_predict

        run_predict(args)
    elif args.command == "generate":
        from keras_dynmask.app.generate_cli import run_generate

        run_generate(args)


if __name__ == "__main__":
    sys.exit(main())
