"""The `generate` command of `keras-dynmask`: continue prompts with a causal
LM, or decode sources with an encoder-decoder, from a `.keras` file, a
SavedModel (its `generate` signature) or a `.tflite` file (its `prefill`
and `decode` signatures)."""

import json

from keras_dynmask.app.serving_cli import _load_keras
from keras_dynmask.app.serving_cli import artifact_at
from keras_dynmask.app.serving_cli import tokenizer_for


def run_generate(args):
    artifact = artifact_at(args.model)
    tokenizer = tokenizer_for(args.vocabulary, artifact)
    if args.prompts and tokenizer is None:
        raise ValueError(
            "Text prompts need the model's vocabulary.txt: none was found "
            f"beside {str(artifact)!r}; pass --vocabulary, or --ids"
        )
    if not args.prompts and not args.ids:
        raise ValueError("Nothing to continue: pass prompts or --ids")
    if args.prompts and args.ids:
        raise ValueError("Pass text prompts or --ids, not both")
    prompts = args.ids or _encoded(tokenizer, args)
    sources = args.source
    if sources and len(prompts) == 1:
        prompts = prompts * len(sources)  # one start for every source
    end_id = args.end_id
    if end_id is None and tokenizer is not None:
        end_id = tokenizer.sep_id
    settings = {
        "max_new_tokens": args.max_new_tokens,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "temperature": args.temperature,
        "seed": args.seed,
        "end_id": end_id,
    }
    continuations = _continue(artifact, prompts, settings, sources)
    if args.json:
        shown = {"prompts": prompts, "new_token_ids": continuations}
        if sources:
            shown["sources"] = sources
        print(json.dumps(shown))
        return
    shown = args.prompts or [_ids(prompt) for prompt in prompts]
    if sources:
        shown = [
            f"{_ids(s)} -> {p}" for s, p in zip(sources, shown, strict=True)
        ]
    for text, new in zip(shown, continuations, strict=True):
        if tokenizer is None:
            print(f"{text} | {_ids(new)}")
        else:
            print(f"{text} | {tokenizer.decode(new)}")


def _encoded(tokenizer, args):
    """`[CLS]` and each prompt's ids, no `[SEP]` (it is to be continued)."""
    rows = tokenizer.tokenize(args.prompts).to_list()
    return [[tokenizer.cls_id, *row] for row in rows]


def _ids(ids):
    return ",".join(map(str, ids))


def _continue(artifact, prompts, settings, sources):
    """Each prompt's new token ids, from whichever artifact."""
    if artifact.suffix == ".keras":
        from keras_dynmask.models import generation

        model = _load_keras(artifact)
        return generation.generate(model, prompts, sources=sources, **settings)
    if artifact.suffix == ".tflite":
        from keras_dynmask.tf import export

        generator = export.TFLiteGenerator(artifact)
        return generator.generate(prompts, sources=sources, **settings)
    return _saved_model(artifact, prompts, settings, sources)


def _saved_model(artifact, prompts, settings, sources):
    """Through the SavedModel's `generate` signature, as a TF Serving
    client would call it (ids, padded; greedy is `top_k=1`)."""
    import tensorflow as tf

    from keras_dynmask.models.generation import pad_prompts
    from keras_dynmask.models.generation import pad_sources
    from keras_dynmask.tf.quiet import held_back_stderr

    loaded = tf.saved_model.load(str(artifact))
    if "generate" not in loaded.signatures:
        raise ValueError(
            f"The SavedModel {str(artifact)!r} has no generate signature: "
            "export a causal LM or an encoder-decoder (keras-dynmask "
            "export MODEL.keras --saved-model DIR)"
        )
    generate = loaded.signatures["generate"]
    inputs = generate.structured_input_signature[1]
    if "token_ids" not in inputs:
        raise ValueError(
            f"{str(artifact)!r} takes text: pass the ids model's folder "
            "(the one above text/)"
        )
    feed = {}
    if "source_ids" in inputs:
        if sources is None:
            raise ValueError(
                f"{str(artifact)!r} is an encoder-decoder: pass each source "
                "with --source"
            )
        feed["source_ids"] = tf.constant(pad_sources(sources, len(prompts), 0))
    elif sources is not None:
        raise ValueError(
            f"{str(artifact)!r} is a causal LM, which continues its prompts "
            "alone: --source is for an encoder-decoder"
        )
    _, ids = pad_prompts(prompts, 0)
    sampled = settings["top_k"] is not None or settings["top_p"] is not None
    # TensorFlow's runtime may log at its first run (on some CPUs: "oneDNN
    # supports DT_BOOL only on platforms with AVX-512"); shown on failure.
    with held_back_stderr():
        out = generate(
            **feed,
            token_ids=tf.constant(ids),
            max_new_tokens=tf.constant(settings["max_new_tokens"]),
            top_k=tf.constant((settings["top_k"] or 0) if sampled else 1),
            top_p=tf.constant(float(settings["top_p"] or 1.0)),
            temperature=tf.constant(float(settings["temperature"])),
            seed=tf.constant(settings["seed"], tf.int64),
            end_id=tf.constant(_or(settings["end_id"], -1)),
        )
    tokens, lengths = out["token_ids"].numpy(), out["lengths"].numpy()
    return [row[:n].tolist() for row, n in zip(tokens, lengths, strict=True)]


def _or(value, default):
    return default if value is None else value
