"""WIP (issue 25): a stack of Keras 3 LSTM layers becomes one fused UNIDIRECTIONAL_SEQUENCE_LSTM per layer."""

import keras
import numpy as np
import pytest

litert = pytest.importorskip("ai_edge_litert")


def test_two_keras_lstm_layers_become_two_fused_ops_matching_keras():
    import tensorflow as tf

    from tf_rnn import litert as lite

    inputs = keras.Input((28, 28), batch_size=1)
    first = keras.layers.LSTM(16, return_sequences=True)
    second = keras.layers.LSTM(8)
    head = keras.layers.Dense(10)
    model = keras.Model(inputs, head(second(first(inputs))))

    def forward(x):
        x = lite.lstm_layer(x, first.cell, return_sequences=True)
        return head(lite.lstm_layer(x, second.cell, return_sequences=False))

    tflite = lite.convert(forward, model, tf.TensorSpec([1, 28, 28], tf.float32))
    ops = lite.op_names(tflite)
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2, ops
    assert not {"WHILE", "READ_VARIABLE", "VAR_HANDLE", "FlexWhile"} & set(ops), ops
    x = np.random.default_rng(0).random((1, 28, 28)).astype("float32")
    np.testing.assert_allclose(lite.run(tflite, x), model.predict(x, verbose=0), atol=1e-5)
