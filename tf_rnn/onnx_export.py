"""ONNX (WIP, issue 25): a tf_rnn SavedModel's serving signature as an .onnx with the ONNX LSTM/GRU/RNN ops.

tf2onnx (the library Keras itself uses) rewrites Keras 3's recurrent while-loops into the ONNX `LSTM` op (no `Loop`)
when nothing cuDNN-specific is in the graph, which tf_rnn's exports guarantee. Not wired into the CLI yet.
"""

from __future__ import annotations

from pathlib import Path

OPSET = 17  # ONNX Runtime 1.31 runs it; LSTM/GRU/RNN have had their current form since opset 14.


def convert(saved_model: Path, signature: str = "serving_default"):
    """The signature as an ONNX ModelProto, batch dynamic, outputs named as the signature's."""
    import tensorflow as tf
    import tf2onnx

    loaded = tf.saved_model.load(str(saved_model))  # Kept referenced: the signature reads its variables.
    serve = loaded.signatures[signature]
    (name, spec), = serve.structured_input_signature[1].items()
    function = tf.function(lambda x: serve(**{name: x}))
    proto, _ = tf2onnx.convert.from_function(
        function, input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=name)], opset=OPSET)
    del loaded
    return proto
