"""Keras layers: token masks, masked-LM masking, feature masking,
attention, blocks."""

from keras_dynmask.layers.attention_mask import AttentionMask
from keras_dynmask.layers.embedding import SinusoidalPositions
from keras_dynmask.layers.embedding import TokenEmbedding
from keras_dynmask.layers.grouped_query_attention import GroupedQueryAttention
from keras_dynmask.layers.multi_head_attention import MultiHeadAttention
from keras_dynmask.layers.time_frequency_masking import TimeFrequencyMasking
from keras_dynmask.layers.token_masking import TokenMasking
from keras_dynmask.layers.token_masks import LengthMask
from keras_dynmask.layers.token_masks import PaddingMask
from keras_dynmask.layers.token_masks import SpanTokenMask
from keras_dynmask.layers.transformer_block import TransformerBlock
from keras_dynmask.layers.transformer_decoder import TransformerDecoder
from keras_dynmask.layers.transformer_encoder import TransformerEncoder

__all__ = [
    "AttentionMask",
    "GroupedQueryAttention",
    "LengthMask",
    "MultiHeadAttention",
    "PaddingMask",
    "SinusoidalPositions",
    "SpanTokenMask",
    "TimeFrequencyMasking",
    "TokenEmbedding",
    "TokenMasking",
    "TransformerBlock",
    "TransformerDecoder",
    "TransformerEncoder",
]
