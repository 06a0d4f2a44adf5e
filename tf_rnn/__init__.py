"""tf_rnn: the classic "LSTM reads MNIST row by row" example, reproduced, fixed and surpassed in TF 2 / Keras 3."""

import os

# TensorFlow's C++ start-up chatter (CPU feature guards, oneDNN notices) buries the training output; users can
# still turn it back on by setting the variable themselves before importing tf_rnn.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
