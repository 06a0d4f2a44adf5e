"""Fused: tf_rnn's CPU LSTM — a whole layer as one compiled op forward and one backward (kernels/lstm_sequence.cc).

On a CPU, TensorFlow trains an LSTM at the speed of its op dispatch (~1,000 small ops per training step); these
two ops do the same arithmetic as `keras.layers.LSTM` in two dispatches, ~1.6x faster (README, Performance).
The kernel compiles from this package's source with g++ on first use (15-60 s, then cached); without a compiler
it warns once and Keras' LSTM does the work. Never used where a GPU is visible (cuDNN is the fast path there) nor
in exports. `TF_RNN_FUSED=0` switches it off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import tensorflow as tf

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "lstm_sequence.cc"
ENV_SWITCH = "TF_RNN_FUSED"  # "0" leaves Keras' LSTM everywhere; unset or anything else: the fused path.

_module = None
_tried = False


def cache_dir() -> Path:
    return Path(os.environ.get("TF_RNN_CACHE", Path.home() / ".cache" / "tf_rnn"))


def _cpu_flags() -> bytes:
    # -march=native code must not be reused on another CPU: the cache key includes the CPU's feature flags.
    try:
        return next(line for line in Path("/proc/cpuinfo").read_bytes().splitlines() if line.startswith(b"flags"))
    except (OSError, StopIteration):
        return b""


def build() -> Path:
    """Compiles the kernel from this package's source into the cache (once per source, TensorFlow and CPU).

    Raises:
      RuntimeError: no C++ compiler, or the build failed (the first error line says why).
    """
    compile_flags, link_flags = tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()
    key = hashlib.sha256(
        KERNEL_SOURCE.read_bytes() + tf.__version__.encode() + " ".join(compile_flags).encode() + _cpu_flags()
    ).hexdigest()[:16]
    out = cache_dir() / f"{KERNEL_SOURCE.stem}-{key}.so"
    if out.exists():
        return out
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise RuntimeError(f"no C++ compiler ({cxx}) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"tf_rnn: compiling the fused CPU LSTM kernel into {out.parent} (once; 15-60 s)", file=sys.stderr, flush=True)
    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.so")  # Concurrent first builds each write their own.
    cmd = [cxx, "-O3", "-march=native", "-shared", "-fPIC", "-w", *compile_flags, str(KERNEL_SOURCE), "-o",
           str(tmp), *link_flags]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if "error" in line] or done.stderr.splitlines()[-1:]
        raise RuntimeError(f"building {KERNEL_SOURCE.name} failed: {errors[0] if errors else done.returncode}")
    tmp.replace(out)
    return out


def kernels():
    """The compiled ops, or None: switched off, or not buildable here (then a warning says why, once)."""
    global _module, _tried
    if not _tried:
        _tried = True
        if os.environ.get(ENV_SWITCH, "1") != "0":
            try:
                _module = tf.load_op_library(str(build()))
            except Exception as e:  # noqa: BLE001 - any failure means: use the pure-TensorFlow path.
                warnings.warn(f"tf_rnn: fused CPU LSTM kernel unavailable ({e}); using keras.layers.LSTM", stacklevel=2)
    return _module


def available() -> bool:
    """Whether LSTMs train through the fused path here: the kernels built and no GPU is visible (on a GPU,
    Keras' cuDNN kernel is the fast path and stays untouched; nothing is compiled there)."""
    return not tf.config.list_logical_devices("GPU") and kernels() is not None


@tf.custom_gradient
def _lstm(x, kernel, recurrent_kernel, bias):
    ops = kernels()
    h, c, tanh_c, gates = ops.tf_rnn_lstm_forward(x, kernel, recurrent_kernel, bias)

    def grad(d_h):
        dz, d_kernel, d_recurrent_kernel, d_bias = ops.tf_rnn_lstm_backward(
            d_h, x, recurrent_kernel, h, c, tanh_c, gates
        )
        # The input's gradient is one large product; inside a tf.function TensorFlow prunes it when nothing
        # needs it (the first layer, whose input is data).
        dx = tf.matmul(tf.reshape(dz, [-1, tf.shape(dz)[-1]]), kernel, transpose_b=True)  # dz is time-major.
        dx = tf.transpose(tf.reshape(dx, [tf.shape(x)[1], tf.shape(x)[0], -1]), [1, 0, 2])
        return dx, d_kernel, d_recurrent_kernel, d_bias

    return h, grad


def lstm(inputs, kernel, recurrent_kernel, bias, return_sequences: bool = False):
    """`keras.layers.LSTM`'s computation (zero initial state, no mask) through the compiled kernels.

    Args:
      inputs: `<float32>[batch, time, features]`.
      kernel, recurrent_kernel, bias: the Keras LSTM cell's weights (`[features, 4·units]`, `[units, 4·units]`,
        `[4·units]`, gates i, f, c, o).

    Returns:
      `<float32>[batch, units]`, or `<float32>[batch, time, units]` with `return_sequences`.
    """
    weights = [tf.convert_to_tensor(w) for w in (kernel, recurrent_kernel, bias)]
    h = _lstm(tf.convert_to_tensor(inputs, tf.float32), *weights)
    return h if return_sequences else h[:, -1]
