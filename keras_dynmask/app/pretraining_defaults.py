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
}
