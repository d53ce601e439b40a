"""Models over the layers: functional builders, the masked-LM task,
generation with a key/value cache and parameter schedules.

Every builder derives its masks from the token ids inside the graph; no
mask is a model input.

Example:

>>> import numpy as np, keras_dynmask as kd
>>> encoder = kd.models.build_encoder(
...     100, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16)
>>> tuple(encoder(np.array([[5, 6, 7, 0]])).shape)
(1, 4, 8)
"""

from keras_dynmask.models.builders import build_causal_lm
from keras_dynmask.models.builders import build_classifier
from keras_dynmask.models.builders import build_encoder
from keras_dynmask.models.builders import build_seq2seq
from keras_dynmask.models.causal_lm import CausalLM
from keras_dynmask.models.masked_lm import MaskedLM
from keras_dynmask.models.masked_lm import gather_positions
from keras_dynmask.models.seq2seq import Seq2Seq
from keras_dynmask.models.stock import replace_stock_layers

__all__ = [
    "CausalLM",
    "MaskedLM",
    "Seq2Seq",
    "build_causal_lm",
    "build_classifier",
    "build_encoder",
    "build_seq2seq",
    "gather_positions",
    "replace_stock_layers",
]
