"""legacy_port: the seed's TF1 program (BasicLSTMCell over MNIST rows) running on TF 2 through tf.compat.v1."""

import tf_rnn  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow is first imported)
