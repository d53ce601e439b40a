"""Default settings of `keras-dynmask pretrain`, kept apart so that the
command line can list them without loading the training code."""

DEFAULTS = {
    "vocabulary_size": 8000,
    "max_length": 64,
    "num_layers": 2,
    "num_heads": 4,
    "hidden_dim": 128,
    "intermediate_dim": 256,
    "dropout": 0.1,
    "batch_size": 32,
    "epochs": 8,
    "learning_rate": 2e-3,
    "selection_rate": 0.15,
    "max_selections": 12,
    "seed": 0,
    # How tokens are chosen for the model to predict (see `MASKINGS`).
    "masking": "token",
    # A selection rate going linearly from `selection_rate` to this over
    # the run; `None` keeps it constant.
    "final_selection_rate": None,
    # BERT's static masks: this many fixed masks per sequence, one picked
    # each time it is seen; 0 draws a fresh mask every time (dynamic).
    "static_masks": 0,
}

MASKINGS = {
    "token": "single tokens (BERT, RoBERTa)",
    "whole-word": "every token of each chosen word (BERT's whole-word masking)",
    "span": "spans of whole words, lengths from a geometric distribution "
    "(SpanBERT)",
}

HELP = {
    "masking": "what is hidden for the model to predict: "
    + "; ".join(f"{name}: {text}" for name, text in MASKINGS.items())
    + " (default: %(default)s)",
    "final_selection_rate": "decay (or grow) the selection rate linearly "
    "from --selection-rate to this over the run (default: constant)",
    "static_masks": "BERT's static masking: this many fixed masks per "
    "sequence, one picked each time it is seen (default: 0, a fresh mask "
    "every time: RoBERTa's dynamic masking)",
}
