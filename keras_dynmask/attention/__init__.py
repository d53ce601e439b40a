"""Attention arithmetic over the core: masked softmax (`softmax`), the
block-wise path for windows (`blockwise`) and the key/value cache
(`cache`). `keras.ops` only; imports only `core`.
"""
