"""Convert: load a TF1 BasicLSTMCell checkpoint (the seed's program) into the equivalent Keras model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn.config import resolve

KERNEL, BIAS = "rnn/basic_lstm_cell/kernel", "rnn/basic_lstm_cell/bias"
# The port names the output layer; the seed's own unnamed tf.Variables were saved as Variable / Variable_1.
OUTPUT_NAMES = [("weights", "biases"), ("Variable", "Variable_1")]
INPUT_SIZE = 28


class ConversionError(RunError):
    """The checkpoint is not a BasicLSTMCell classifier of the expected shape. `str()` is one line."""


def read_tf1_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """All variables of a TF1 checkpoint (a folder with a `checkpoint` file, or a prefix like `model.ckpt`)."""
    import tensorflow as tf

    path = str(path)
    prefix = tf.train.latest_checkpoint(path) if Path(path).is_dir() else path
    if not prefix:
        raise ConversionError(f"{path}: no TF1 checkpoint found (expected a folder with a 'checkpoint' file)")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ConversionError(f"{prefix}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def tf1_to_keras_lstm(kernel: np.ndarray, bias: np.ndarray, forget_bias: float = 1.0):
    """TF1 BasicLSTMCell weights → keras.layers.LSTM weights.

    Args:
      kernel: `<float32>[input + units, 4·units]` over `concat([x, h])`, gate columns i, j, f, o.
      bias: `<float32>[4·units]`, same gate order; TF1 adds `forget_bias` to f outside the variable.

    Returns:
      `[kernel <[input, 4·units]>, recurrent_kernel <[units, 4·units]>, bias <[4·units]>]` in Keras' gate order
      i, f, c, o, with the forget bias folded into the bias (Keras keeps all of it in the variable).
    """
    units = kernel.shape[1] // 4
    n_in = kernel.shape[0] - units
    i, j, f, o = np.split(kernel, 4, axis=1)
    keras_kernel = np.concatenate([i, f, j, o], axis=1)
    bi, bj, bf, bo = np.split(bias, 4)
    keras_bias = np.concatenate([bi, bf + forget_bias, bj, bo])
    return [keras_kernel[:n_in], keras_kernel[n_in:], keras_bias]


def convert(checkpoint: str | Path, forget_bias: float = 1.0):
    """Builds the `seed` preset's Keras model holding the checkpoint's weights.

    Raises:
      ConversionError: the checkpoint's variables are not the seed model's (the message lists found and expected).
    """
    variables = read_tf1_checkpoint(checkpoint)
    shapes = {k: list(v.shape) for k, v in variables.items() if not k.startswith(("beta", "global_step"))
              and "Adam" not in k}
    out = next(((w, b) for w, b in OUTPUT_NAMES if w in variables and b in variables), None)
    kernel, bias = variables.get(KERNEL), variables.get(BIAS)
    ok = kernel is not None and bias is not None and out is not None and kernel.ndim == 2 and kernel.shape[1] % 4 == 0
    units = kernel.shape[1] // 4 if ok else None
    if ok:
        weights, biases = variables[out[0]], variables[out[1]]
        ok = (kernel.shape[0] == INPUT_SIZE + units and bias.shape == (4 * units,)
              and weights.shape == (units, 10) and biases.shape == (10,))
    if not ok:
        raise ConversionError(
            f"{checkpoint}: found variables {shapes}; expected {KERNEL} [28+U, 4U], {BIAS} [4U], "
            f"weights [U, 10] and biases [10] (a BasicLSTMCell(U) row classifier as the seed's)"
        )
    from tf_rnn.models import build_model

    model = build_model(resolve("seed", overrides={"units": units}))
    model.get_layer("rnn").rnns[0].set_weights(tf1_to_keras_lstm(kernel, bias, forget_bias))
    model.get_layer("logits").set_weights([weights, biases])
    # A fresh optimizer state, built now so that the saved file loads without a variable-count mismatch warning.
    model.optimizer.build(model.trainable_variables)
    return model


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m tf_rnn.convert_tf1", description=__doc__)
    parser.add_argument("checkpoint", help="TF1 checkpoint folder (with a 'checkpoint' file) or prefix")
    parser.add_argument("--out", required=True, help="the .keras file to write")
    parser.add_argument("--forget-bias", type=float, default=1.0, help="the forget_bias the TF1 cell used")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".keras":
        raise UsageError(f"--out {out}: must end in .keras")
    if out.exists():
        raise UsageError(f"--out {out}: exists; choose another path (nothing was overwritten)")
    model = convert(args.checkpoint, args.forget_bias)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    print(f"wrote {out} (LSTM({model.get_layer('rnn').units[0]}) from {args.checkpoint})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
