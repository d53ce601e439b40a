"""The application: the `keras-dynmask` command (`cli`, `serving_cli`),
the main job (`pretraining`, `corpus`), the demo and pictures (`viz`).

May import every tier; nothing imports it.
"""
