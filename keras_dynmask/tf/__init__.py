"""The TensorFlow tier: masked-LM masking in tf.data (`data`), the
WordPiece tokenizer (`tokenizer`), SavedModel and TFLite export
(`export`), and a quiet TensorFlow start (`quiet`).

The only modules of the library that import TensorFlow at import time.
"""
