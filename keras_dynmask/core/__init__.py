"""The masking core: pure functions and small objects, `keras.ops` only.

Mask functions (`masks`), the pattern algebra (`patterns`) and its text
form (`parsing`), score modifiers (`scores`), the masked-LM rules
(`masked_lm`) and keyed random numbers (`_random`). Imports nothing else
of this package, and never TensorFlow.
"""
