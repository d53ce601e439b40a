"""The main job: masked-LM pretraining with dynamic masking, and fill-mask.

keras-dynmask pretrain [--corpus PATH] [--output saved_models/masked_lm]
keras-dynmask fill-mask "the [MASK] of a list" [--model DIR]
"""

import collections
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_dynmask import models
from keras_dynmask.app import corpus
from keras_dynmask.app import training_data
from keras_dynmask.app.checkpoints import StepBackup
from keras_dynmask.app.pretraining_defaults import DEFAULTS
from keras_dynmask.app.pretraining_defaults import MASKINGS
from keras_dynmask.core import masked_lm
from keras_dynmask.core._checks import check_fraction
from keras_dynmask.core._checks import check_int
from keras_dynmask.layers import TokenMasking
from keras_dynmask.models.schedules import VariableSchedule
from keras_dynmask.models.schedules import linear
from keras_dynmask.tf import data
from keras_dynmask.tf import distribute
from keras_dynmask.tf import export
from keras_dynmask.tf.tokenizer import WordPieceTokenizer

SAMPLE = "Return a new [MASK] containing the items of the list."
# Steps in an epoch of a streamed corpus, whose length is not counted.
STREAMED_EPOCH = 1000


def pretrain(
    corpus_path=None,
    output="saved_models/masked_lm",
    steps_per_epoch=None,
    callbacks=(),
    log=print,
    save_every=100,
    strategy=None,
    stream=None,
    vocabulary_sample_mb=32,
    **settings,
):
    """Pretrains a masked-LM encoder and writes it to `output`.

    A run killed at any moment (even while it writes) resumes when rerun
    with the same arguments: from its last checkpoint, at that very step
    and batch of data, and it ends with the weights an uninterrupted run
    ends with (bit for bit on the CPU).

    Args:
        corpus_path: a `.txt` file or folder, or `None` for the embedded
            corpus.
        output: folder for `model.keras`, `vocabulary.txt`,
            `settings.json`, a SavedModel of token ids in the next free
            version folder (`1/`, `2/`, ...: TF Serving's layout; it loads
            with TensorFlow alone), the raw-text SavedModel of the same
            version under `text/` (it needs `import tensorflow_text`),
            `masked_lm.tflite` and, while training, the `backup/` a rerun
            resumes from.
        steps_per_epoch: int or `None` (a full pass over the data).
        callbacks: extra Keras callbacks.
        log: where progress lines go.
        save_every: int >= 1. Steps between checkpoints (and one at each
            epoch's end). Defaults to `100`.
        stream: bool, or `None` to stream a corpus of over 256 MB: read
            `corpus_path` a paragraph at a time on every pass instead of
            whole (see `training_data`). A streamed epoch is
            `steps_per_epoch` steps (default 1000).
        vocabulary_sample_mb: number > 0. A streamed corpus's vocabulary
            is learned from its first training documents up to this many
            MB of text. Defaults to `32`.
        strategy: a `tf.distribute` strategy; defaults to the current one.
            Under `MultiWorkerMirroredStrategy` every worker makes the same
            call (the same arguments, `output` on storage they share): each
            replica trains on its slice of every global batch of
            `batch_size` rows, and the chief alone writes checkpoints and
            the model.
        **settings: overrides of `DEFAULTS`.

    Returns:
        dict of the measured results.
    """
    settings = check_settings(settings, steps_per_epoch)
    save_every = check_int("save_every", save_every, minimum=1)
    if not (
        isinstance(vocabulary_sample_mb, (int, float))
        and vocabulary_sample_mb > 0
    ):
        raise ValueError(
            "vocabulary_sample_mb must be a number > 0, received "
            f"vocabulary_sample_mb={vocabulary_sample_mb!r}"
        )
    output = pathlib.Path(output)
    if stream is None:
        stream = (
            corpus_path is not None
            and corpus.corpus_bytes(corpus_path) > corpus.STREAM_ABOVE
        )
    run = {
        **settings,
        "corpus": None if corpus_path is None else str(corpus_path),
        "steps_per_epoch": steps_per_epoch,
        "stream": bool(stream),
        # Read only when streaming: in memory, the whole corpus is used.
        "vocabulary_sample_mb": vocabulary_sample_mb if stream else None,
    }
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    _check_resumable(output / "backup", run)
    created = _make_output(output)
    try:
        return _pretrain(output, run, save_every, callbacks, log, strategy)
    except BaseException:
        # A run that failed before its first checkpoint leaves nothing.
        backup = StepBackup(output / "backup", 1, 1)
        if chief and created and not backup.checkpoints():
            shutil.rmtree(output, ignore_errors=True)
        raise


def check_settings(settings, steps_per_epoch=None):
    """`DEFAULTS` updated with `settings`, each checked; a `ValueError`
    names the first bad one."""
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"Unknown setting {unknown[0]!r}; known: {', '.join(DEFAULTS)}"
        )
    settings = {**DEFAULTS, **settings}
    for name, value in settings.items():
        if isinstance(DEFAULTS[name], int):
            zero = name in ("seed", "static_masks")
            check_int(name, value, minimum=0 if zero else 1)
    if settings["max_length"] < 3:
        raise ValueError(
            "max_length must be at least 3 ([CLS], a token, [SEP]), "
            f"received max_length={settings['max_length']}"
        )
    if settings["hidden_dim"] % settings["num_heads"]:
        raise ValueError(
            "hidden_dim must be a multiple of num_heads (each head gets "
            f"hidden_dim / num_heads dimensions), received hidden_dim="
            f"{settings['hidden_dim']}, num_heads={settings['num_heads']}"
        )
    check_fraction("dropout", settings["dropout"])
    check_fraction(
        "selection_rate",
        settings["selection_rate"],
        with_zero=False,
        with_one=True,
    )
    if settings["masking"] not in MASKINGS:
        raise ValueError(
            f"masking must be one of {', '.join(MASKINGS)}, received "
            f"masking={settings['masking']!r}"
        )
    if settings["final_selection_rate"] is not None:
        check_fraction(
            "final_selection_rate",
            settings["final_selection_rate"],
            with_zero=False,
            with_one=True,
        )
        if settings["static_masks"]:
            raise ValueError(
                "static masks are drawn once, at one rate: give "
                "final_selection_rate or static_masks, not both; received "
                f"final_selection_rate={settings['final_selection_rate']!r},"
                f" static_masks={settings['static_masks']!r}"
            )
    if not settings["learning_rate"] > 0:
        raise ValueError(
            "learning_rate must be > 0, received "
            f"learning_rate={settings['learning_rate']!r}"
        )
    if steps_per_epoch is not None:
        check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    return settings


def _check_resumable(backup, run):
    """Refuses to resume a backup written with other settings."""
    written = backup / "run.json"
    if not written.exists():
        return
    # A setting a backup predates had its default then.
    before = {**DEFAULTS, **json.loads(written.read_text())}
    differ = [
        f"{name} {before.get(name)!r} then, {run[name]!r} now"
        for name in run
        if before.get(name) != run[name]
    ]
    if differ:
        raise ValueError(
            f"{backup.parent} holds an interrupted run with other settings "
            f"({'; '.join(differ)}). Rerun with the same settings to "
            f"resume it, or delete {backup} (or choose another --output) "
            "to start over"
        )


def _make_output(output):
    """Creates `output` if needed; says clearly when it cannot be written.
    Returns whether it was created."""
    existed = output.is_dir()
    try:
        output.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=output).close()
    except OSError as error:
        raise ValueError(
            f"Cannot write to the output folder {str(output)!r}: "
            f"{error.strerror or error}"
        ) from error
    return not existed


def _pretrain(output, run, save_every, callbacks, log, strategy):
    settings = {name: run[name] for name in DEFAULTS}
    keras.utils.set_random_seed(settings["seed"])
    start = time.time()
    corpus_data = training_data.load(run, settings, cache_dir(), log)
    tokenizer = corpus_data.tokenizer
    corpus_data.check(strategy)
    if strategy.num_replicas_in_sync > 1:
        log(
            f"Replicas: {strategy.num_replicas_in_sync} in sync, global "
            f"batches of {settings['batch_size']} rows, "
            f"{corpus_data.sharing}"
        )
    held_out = corpus_data.held_out_sequences
    with strategy.scope():
        model = _build(tokenizer, settings)
        held_out_data = distribute.replica_batches(
            lambda: data.batched(held_out, settings["batch_size"]),
            strategy,
            pad_id=tokenizer.pad_id,
        )
        epochs_run = _train(
            model,
            corpus_data,
            held_out_data,
            run,
            output,
            save_every,
            callbacks,
            log,
            strategy,
        )
        results = model.evaluate(held_out_data, verbose=0, return_dict=True)
        baseline = unigram_baseline(
            model,
            tokenizer,
            corpus_data.counted_sequences,
            data.batched(held_out, settings["batch_size"]),
        )
    log(
        f"Held-out masked-LM accuracy {results['accuracy']:.3f} "
        f"(loss {results['loss']:.3f}); a unigram baseline (always the most "
        f"frequent token) gets {baseline:.3f}"
    )
    results = {
        "held_out_accuracy": results["accuracy"],
        "held_out_loss": results["loss"],
        "unigram_accuracy": baseline,
        "epochs_run": epochs_run,
    }
    if not distribute.is_chief(strategy):
        # Saving reads the mirrored variables, which every worker joins.
        with tempfile.TemporaryDirectory() as elsewhere:
            model.save(pathlib.Path(elsewhere) / "model.keras")
        log(f"Done in {time.time() - start:.0f} s; the chief writes the model")
        return results
    _save_and_export(output, model, tokenizer, settings, log)
    # Everything is written: the backup has served.
    shutil.rmtree(output / "backup", ignore_errors=True)
    log(f"Done in {time.time() - start:.0f} s")
    return results


def _train(
    model,
    corpus_data,
    held_out_data,
    run,
    output,
    save_every,
    callbacks,
    log,
    strategy,
):
    """Compiles and fits `model`, resuming from the backup in `output` at
    the step it stopped; returns how many epochs (or parts) ran."""
    settings = {name: run[name] for name in DEFAULTS}
    steps_per_epoch = (
        run["steps_per_epoch"] or corpus_data.steps_per_pass or STREAMED_EPOCH
    )
    epochs = settings["epochs"]
    total_steps = epochs * steps_per_epoch
    learning_rate = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=total_steps,
        warmup_target=settings["learning_rate"],
        warmup_steps=max(1, total_steps // 10),
    )
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate))
    backup = StepBackup(output / "backup", steps_per_epoch, save_every, log)
    done = backup.restore(model)
    _same_on_every_worker(done, strategy, output / "backup")
    if distribute.is_chief(strategy):
        (output / "backup").mkdir(exist_ok=True)
        (output / "backup" / "run.json").write_text(json.dumps(run, indent=2))
    epoch, batch = divmod(done, steps_per_epoch)
    if done:
        log(
            f"Resuming at step {done} of {total_steps} (epoch {epoch + 1} "
            f"of {epochs}, batch {batch} of {steps_per_epoch}), from the "
            f"checkpoint in {output / 'backup'}"
        )

    schedules = []
    if settings["final_selection_rate"] is not None:
        # Set before every step from the step's number: a resumed run sets
        # the rates an uninterrupted one does.
        rate = linear(
            settings["selection_rate"],
            settings["final_selection_rate"],
            total_steps,
        )
        variable = model.masking.selection_rate_variable
        schedules.append(VariableSchedule(variable, rate, initial_step=done))

    def fit(first_epoch, last_epoch, steps):
        # Batch n of the stream is the same in every run: a resumed run
        # rejoins it at the step it restored.
        step = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        stream = corpus_data.batches(step, strategy, model.masking.pad_id)
        model.fit(
            stream,
            initial_epoch=first_epoch,
            epochs=last_epoch,
            steps_per_epoch=steps,
            validation_data=held_out_data,
            callbacks=[*schedules, backup, *callbacks],
            shuffle=False,  # the pipeline shuffles
            verbose=1 if sys.stdout.isatty() else 2,
        )

    epochs_run = 0
    if batch:  # the rest of the interrupted epoch, then the others
        fit(epoch, epoch + 1, steps_per_epoch - batch)
        epoch, epochs_run = epoch + 1, 1
    if epoch < epochs:
        fit(epoch, epochs, steps_per_epoch)
        epochs_run += epochs - epoch
    return epochs_run


def _same_on_every_worker(step, strategy, backup):
    """Refuses to go on when the workers restored different steps (a
    backup folder they do not share)."""
    if strategy.num_replicas_in_sync == 1:
        return

    @tf.function
    def every_step():
        mine = strategy.run(lambda: tf.constant([step], tf.int64))
        return strategy.gather(mine, axis=0)

    steps = sorted(set(every_step().numpy().tolist()))
    if len(steps) > 1:
        raise ValueError(
            f"The workers restored different steps ({steps}) from {backup}: "
            "every worker must see the chief's --output folder (shared "
            "storage)"
        )


def _save_and_export(output, model, tokenizer, settings, log):
    """`model.keras`, `vocabulary.txt`, `settings.json`, the SavedModels and
    the TFLite file, each written beside its place and renamed into it, so
    a run killed meanwhile leaves no half-written file."""
    for folder in (output, output / "text"):
        # A version a killed export was writing: never renamed into place,
        # so never served; written again below.
        for staging in folder.glob(".*-writing-*"):
            shutil.rmtree(staging, ignore_errors=True)
    _atomically(output / "model.keras", model.save)
    if model.distribute_strategy is not tf.distribute.get_strategy():
        # Variables of a strategy (mirrored across workers) export through
        # a copy of one process's own, which needs no other worker.
        model = keras.saving.load_model(output / "model.keras")
    _atomically(output / "vocabulary.txt", tokenizer.save)
    _atomically(
        output / "settings.json",
        lambda path: path.write_text(json.dumps(settings, indent=2)),
    )
    saved = export.to_saved_model(model, output)
    text_saved = export.to_text_saved_model(
        model, tokenizer, output / "text", version=int(saved.name)
    )
    tflite = export.to_tflite(model, output / "masked_lm.tflite")
    sample = tokenizer.encode([SAMPLE, "The [MASK] is [MASK]."])
    gaps = export.parity(model, sample, saved_model=saved, tflite=tflite)
    log(
        f"Saved {output / 'model.keras'}, the SavedModels {saved} (token "
        f"ids) and {text_saved} (raw text) for TF Serving, and "
        f"{tflite.name}; largest difference from Keras: "
        f"SavedModel {gaps['saved_model']:.1e}, TFLite {gaps['tflite']:.1e}"
    )
    for line in fill_mask(model, tokenizer, SAMPLE):
        log(line)


def _atomically(path, write):
    """Calls `write(staging)` on a path beside `path`, then renames it."""
    staging = path.with_name(f".writing-{path.name}")
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


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

    def token_masking(**options):
        return TokenMasking(
            tokenizer.vocabulary_size,
            mask_token_id=tokenizer.mask_id,
            max_selections=settings["max_selections"],
            unselectable_ids=tokenizer.special_ids,
            pad_id=tokenizer.pad_id,
            seed=settings["seed"],
            **options,
        )

    options = {}
    if settings["masking"] != "token":
        # Words from the ids: "##..." pieces continue the word before them.
        continues = masked_lm.continuation_table(tokenizer.vocabulary)
        options["continuation_ids"] = np.flatnonzero(continues).tolist()
    if settings["masking"] == "span":
        options["span_masking"] = True
    if settings["static_masks"]:
        options.update(static=True, dupe_factor=settings["static_masks"])
    masking = token_masking(
        selection_rate=settings["selection_rate"], name="masking", **options
    )
    final_rate = settings["final_selection_rate"]
    evaluation_masking = None
    if final_rate is not None or options:
        # Scored on single-token masks at the rate training ends at, as a
        # run with the default masking is: held-out accuracies compare.
        evaluation_masking = token_masking(
            selection_rate=final_rate or settings["selection_rate"]
        )
    model = models.MaskedLM(
        encoder, masking, evaluation_masking=evaluation_masking
    )
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
    Keras, a SavedModel or TFLite); ids stand for tokens when `tokenizer`
    is `None`."""
    lines = [f"Fill-mask: {text}"]
    for slot in np.flatnonzero(np.asarray(outputs["mask_weights"])[0]):
        scores = np.asarray(outputs["logits"], "float64")[0, slot]
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        best = np.argsort(-probabilities)[:top_k]
        guesses = ", ".join(
            f"{tokenizer.vocabulary[i] if tokenizer else i} "
            f"({probabilities[i]:.2f})"
            for i in best
        )
        position = np.asarray(outputs["mask_positions"])[0, slot]
        lines.append(f"  [MASK] at {position}: {guesses}")
    if len(lines) == 1:
        lines.append("  (no [MASK] token to fill)")
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
