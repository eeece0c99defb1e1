"""tfchat: train your own ChatGPT-style model end to end with TensorFlow and Keras.

Data flows through the package in one direction, room by room:
data (corpus, tokenizer, pipeline) -> model -> train -> inference and
evaluation -> serving -> objectives -> run -> job -> the commands
(`python -m tfchat.<command>`). README.md's Layout section lists every module.
"""

import os

# tfchat is built on the TensorFlow backend; set it before Keras is imported
# anywhere, so users never have to. TensorFlow's logging is left alone here:
# importing the library (a notebook, a script) does not change the user's
# TF_CPP_MIN_LOG_LEVEL. The commands quiet TensorFlow's start-up notices
# themselves, first thing (`tfchat.quiet.command_startup`, `--verbose`).
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

__version__ = "0.1.0"
