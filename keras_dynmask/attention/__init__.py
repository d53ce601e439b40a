"""Attention arithmetic over the core: masked softmax (`softmax`), causal
self-attention in query chunks (`causal`), the block-wise path for windows
(`blockwise`), attention over only the tiles of a mask that hold a key
(`block_sparse`) and the key/value cache (`cache`). `keras.ops` only;
imports only `core`.
"""
