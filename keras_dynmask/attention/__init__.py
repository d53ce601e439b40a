"""Attention arithmetic over the core: masked softmax (`softmax`), causal
self-attention in query chunks (`causal`), the block-wise path for windows
(`blockwise`), which tiles of a pattern's mask are empty or full
(`tile_mask`), attention over only the tiles that hold a key
(`block_sparse`) and the key/value cache (`cache`). `keras.ops` only;
imports only `core`.
"""
