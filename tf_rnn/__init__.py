"""tf_rnn: the classic "LSTM reads MNIST row by row" example, reproduced, fixed and surpassed in TF 2 / Keras 3."""

import os

# TensorFlow's C++ start-up chatter (CPU feature guards, oneDNN notices) buries the training output; users can
# still turn it back on by setting the variable themselves before importing tf_rnn.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Keras deserialises a custom class only once the module that registers it has been imported: importing them here
# is what lets `import tf_rnn` + `keras.saving.load_model(...)` read every model tf_rnn writes.
from tf_rnn import datasets, layers, models  # noqa: E402, F401

__version__ = "0.1.0"
