"""The main job: masked-LM pretraining with dynamic masking, and fill-mask.

keras-dynmask pretrain [--corpus PATH] [--output saved_models/masked_lm]
keras-dynmask fill-mask "the [MASK] of a list" [--model DIR]
"""

import collections
import json
import os
import pathlib
import sys
import time

import keras
import numpy as np

from keras_dynmask import corpus
from keras_dynmask import data
from keras_dynmask import export
from keras_dynmask import models
from keras_dynmask.layers import TokenMasking
from keras_dynmask.pretraining_defaults import DEFAULTS
from keras_dynmask.tokenizer import WordPieceTokenizer

SAMPLE = "Return a new [MASK] containing the items of the list."


def pretrain(
    corpus_path=None,
    output="saved_models/masked_lm",
    steps_per_epoch=None,
    callbacks=(),
    log=print,
    **settings,
):
    """Pretrains a masked-LM encoder and writes it to `output`.

    Args:
        corpus_path: a `.txt` file or folder, or `None` for the embedded
            corpus.
        output: folder for `model.keras`, `vocabulary.txt`,
            `settings.json`, a SavedModel in the next free version folder
            (`1/`, `2/`, ...: TF Serving's layout, with a raw-text
            signature), `masked_lm.tflite` and, while training, the
            `backup/` a rerun resumes from.
        steps_per_epoch: int or `None` (a full pass over the data).
        callbacks: extra Keras callbacks.
        log: where progress lines go.
        **settings: overrides of `DEFAULTS`.

    Returns:
        dict of the measured results.
    """
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown setting {unknown[0]!r}")
    settings = {**DEFAULTS, **settings}
    if settings["max_length"] < 3:
        raise ValueError(
            "max_length must be at least 3 ([CLS], a token, [SEP]), "
            f"received max_length={settings['max_length']}"
        )
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(settings["seed"])

    start = time.time()
    if corpus_path is None:
        documents = corpus.default_corpus()
        source = "the embedded corpus (standard-library docstrings, pydoc)"
    else:
        documents = corpus.read_corpus(corpus_path)
        source = str(corpus_path)
    training, held_out = corpus.split_documents(documents)
    log(
        f"Corpus: {source}: {len(documents)} documents, "
        f"{sum(len(d.split()) for d in documents):,} words "
        f"({len(held_out)} documents held out)"
    )
    tokenizer = WordPieceTokenizer.build(
        training, settings["vocabulary_size"], cache_dir=cache_dir()
    )
    tokenizer.save(output / "vocabulary.txt")
    log(f"Vocabulary: {tokenizer.vocabulary_size} WordPiece tokens")
    train_sequences = data.sequences(
        tokenizer, training, settings["max_length"]
    )
    held_out_sequences = data.sequences(
        tokenizer, held_out, settings["max_length"]
    )
    log(
        f"Sequences: {len(train_sequences)} for training, "
        f"{len(held_out_sequences)} held out, at most "
        f"{settings['max_length']} tokens, batches padded to their own "
        "longest"
    )
    train_data = data.batched(
        train_sequences, settings["batch_size"], seed=settings["seed"]
    )
    held_out_data = data.batched(held_out_sequences, settings["batch_size"])

    model = _build(tokenizer, settings)
    total_steps = settings["epochs"] * (
        steps_per_epoch or int(train_data.cardinality())
    )
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps,
        warmup_target=settings["learning_rate"],
        warmup_steps=max(1, total_steps // 10),
    )
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate))
    backup = keras.callbacks.BackupAndRestore(str(output / "backup"))
    history = model.fit(
        train_data.repeat() if steps_per_epoch else train_data,
        epochs=settings["epochs"],
        steps_per_epoch=steps_per_epoch,
        validation_data=held_out_data,
        callbacks=[backup, *callbacks],
        shuffle=False,  # the pipeline shuffles
        verbose=1 if sys.stdout.isatty() else 2,
    )
    results = model.evaluate(held_out_data, verbose=0, return_dict=True)
    baseline = unigram_baseline(
        model, tokenizer, train_sequences, held_out_data
    )
    log(
        f"Held-out masked-LM accuracy {results['accuracy']:.3f} "
        f"(loss {results['loss']:.3f}); a unigram baseline (always the most "
        f"frequent token) gets {baseline:.3f}"
    )

    model.save(output / "model.keras")
    (output / "settings.json").write_text(json.dumps(settings, indent=2))
    saved = export.to_saved_model(model, output, tokenizer=tokenizer)
    tflite = export.to_tflite(model, output / "masked_lm.tflite")
    sample = tokenizer.encode([SAMPLE, "The [MASK] is [MASK]."])
    gaps = export.parity(model, sample, saved_model=saved, tflite=tflite)
    log(
        f"Saved {output / 'model.keras'}, the SavedModel {saved} (for TF "
        f"Serving) and {tflite.name}; largest difference from Keras: "
        f"SavedModel {gaps['saved_model']:.1e}, TFLite {gaps['tflite']:.1e}"
    )
    for line in fill_mask(model, tokenizer, SAMPLE):
        log(line)
    log(f"Done in {time.time() - start:.0f} s")
    return {
        "held_out_accuracy": results["accuracy"],
        "held_out_loss": results["loss"],
        "unigram_accuracy": baseline,
        "epochs_run": len(history.history.get("loss", [])),
    }


def cache_dir():
    """Where learned vocabularies are kept: `$KERAS_DYNMASK_CACHE`, or
    `~/.cache/keras_dynmask`."""
    default = pathlib.Path.home() / ".cache" / "keras_dynmask"
    return pathlib.Path(os.environ.get("KERAS_DYNMASK_CACHE", default))


def _build(tokenizer, settings):
    encoder = models.build_encoder(
        tokenizer.vocabulary_size,
        num_layers=settings["num_layers"],
        num_heads=settings["num_heads"],
        hidden_dim=settings["hidden_dim"],
        intermediate_dim=settings["intermediate_dim"],
        pad_id=tokenizer.pad_id,
        dropout=settings["dropout"],
    )
    masking = TokenMasking(
        tokenizer.vocabulary_size,
        mask_token_id=tokenizer.mask_id,
        selection_rate=settings["selection_rate"],
        max_selections=settings["max_selections"],
        unselectable_ids=tokenizer.special_ids,
        pad_id=tokenizer.pad_id,
        seed=settings["seed"],
        name="masking",
    )
    model = models.MaskedLM(encoder, masking)
    # Built before fit, so that BackupAndRestore can restore into it.
    model(tokenizer.encode(["[MASK]"]))
    return model


def unigram_baseline(model, tokenizer, train_sequences, held_out_data):
    """Accuracy of always guessing the most frequent training token at the
    held-out positions the evaluation masks select."""
    counts = collections.Counter(np.concatenate(train_sequences).tolist())
    for special in tokenizer.special_ids:
        counts.pop(special, None)
    most_frequent = counts.most_common(1)[0][0]
    hits = total = 0.0
    for batch in held_out_data:
        masked = model.evaluation_masking(batch, training=True)
        weights = masked["mask_weights"].numpy()
        hits += float(
            ((masked["mask_ids"].numpy() == most_frequent) * weights).sum()
        )
        total += float(weights.sum())
    return hits / max(total, 1.0)


def fill_mask(model, tokenizer, text, top_k=5):
    """Lines showing the `top_k` guesses for each `[MASK]` in `text`."""
    ids = tokenizer.encode([text])
    if not (ids == tokenizer.mask_id).any():
        raise ValueError(f"text has no [MASK] to fill, received text={text!r}")
    return describe_guesses(
        model.predict(ids, verbose=0), tokenizer, text, top_k
    )


def describe_guesses(outputs, tokenizer, text, top_k=5):
    """Fill-mask lines from a masked-LM's outputs for one text (from
    Keras, a SavedModel or TFLite)."""
    lines = [f"Fill-mask: {text}"]
    for slot in np.flatnonzero(np.asarray(outputs["mask_weights"])[0]):
        scores = np.asarray(outputs["logits"])[0, slot]
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:top_k]
        guesses = ", ".join(
            f"{tokenizer.vocabulary[i]} ({probabilities[i]:.2f})" for i in best
        )
        position = np.asarray(outputs["mask_positions"])[0, slot]
        lines.append(f"  [MASK] at {position}: {guesses}")
    return lines


def load(model_dir):
    """The model and tokenizer a `pretrain` run wrote to `model_dir`."""
    model_dir = pathlib.Path(model_dir)
    if not (model_dir / "model.keras").exists():
        raise ValueError(
            f"No trained model in {str(model_dir)!r}: run `keras-dynmask "
            "pretrain` first, or pass --model DIR"
        )
    model = keras.saving.load_model(model_dir / "model.keras")
    return model, WordPieceTokenizer.load(model_dir / "vocabulary.txt")
