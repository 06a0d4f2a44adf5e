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


def test_an_adding_problem_export_becomes_an_onnx_lstm_with_a_dynamic_batch(tmp_path):
    import onnxruntime
    import tensorflow as tf

    from tf_rnn import onnx_export, train
    from tf_rnn.config import resolve

    config = resolve(overrides=dict(dataset="adding", seq_len=6, units=8, steps=3))
    train.train_and_evaluate(config, tmp_path / "run")
    proto = onnx_export.convert(tmp_path / "run" / "saved_model")
    ops = {node.op_type for node in proto.graph.node}
    assert "LSTM" in ops and "Loop" not in ops, ops
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    serve = tf.saved_model.load(str(tmp_path / "run" / "saved_model")).signatures["serving_default"]
    for batch in (1, 5):
        x = np.random.default_rng(batch).random((batch, 6, 2)).astype("float32")
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, serve(sequences=tf.constant(x))["predictions"].numpy(), atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_stepping_a_stacked_rnn_gives_the_full_sequence_features(cell):
    from tf_rnn import streaming
    from tf_rnn.layers import StackedRNN

    rnn = StackedRNN(cell=cell, units=[6, 5], return_sequences=True)
    x = np.random.default_rng(0).random((3, 7, 4)).astype("float32")
    full = np.asarray(rnn(x, training=False))
    state = streaming.zero_state(rnn, 3)
    for t in range(7):
        out, state = streaming.step(rnn, x[:, t], state)
        np.testing.assert_allclose(np.asarray(out), full[:, t], atol=1e-5)
