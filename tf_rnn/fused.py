"""Fused: an opt-in CPU LSTM path — TensorFlow's MatMul plus one compiled elementwise kernel per step each way.

Off by default: it compiles C++ on first use (15-60 s, needs g++ and TensorFlow's headers), and on this project's
2-core CPU its throughput was within noise of Keras' LSTM (README, Performance). `TF_RNN_FUSED=1` turns it on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import tensorflow as tf

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "lstm_cell.cc"
ENV_SWITCH = "TF_RNN_FUSED"  # "1" turns the fused path on; anything else leaves Keras' LSTM everywhere.

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
    out = cache_dir() / f"lstm_cell-{key}.so"
    if out.exists():
        return out
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise RuntimeError(f"no C++ compiler ({cxx}) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
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
    """The compiled ops, or None: not switched on, or not buildable here (then a warning says why, once)."""
    global _module, _tried
    if not _tried:
        _tried = True
        if os.environ.get(ENV_SWITCH) == "1":
            try:
                _module = tf.load_op_library(str(build()))
            except Exception as e:  # noqa: BLE001 - any failure means: use the pure-TensorFlow path.
                warnings.warn(f"tf_rnn: fused CPU LSTM kernel unavailable ({e}); using keras.layers.LSTM", stacklevel=2)
    return _module


def available() -> bool:
    """Whether LSTMs train through the fused path here: the kernels built and no GPU is visible (on a GPU,
    Keras' cuDNN kernel is the fast path and stays untouched)."""
    return kernels() is not None and not tf.config.list_logical_devices("GPU")


def _recurrence(steps: int):
    ops = kernels()

    @tf.custom_gradient
    def recurrence(xproj, recurrent_kernel):
        """`<float32>[time, batch, 4·units]` input projections → `<float32>[time, batch, units]` hidden states."""
        xs = tf.unstack(xproj, num=steps)
        zeros = tf.zeros([tf.shape(xproj)[1], tf.shape(recurrent_kernel)[0]])
        h, c, hs, cs, gates = zeros, zeros, [], [], []
        for t in range(steps):
            hw = tf.matmul(h, recurrent_kernel) if t else tf.zeros_like(xs[0])
            h, c, g = ops.tf_rnn_lstm_cell_forward(xs[t], hw, c)
            hs.append(h)
            cs.append(c)
            gates.append(g)

        def grad(d_hs):
            d_hs = tf.unstack(d_hs, num=steps)
            dh_next, dc, dzs = zeros, zeros, [None] * steps
            for t in reversed(range(steps)):
                dzs[t], dc = ops.tf_rnn_lstm_cell_backward(
                    d_hs[t] + dh_next, dc, gates[t], cs[t], cs[t - 1] if t else zeros
                )
                if t:
                    dh_next = tf.matmul(dzs[t], recurrent_kernel, transpose_b=True)
            # The recurrent kernel's gradient in one large product instead of one per step (h_{-1} = 0).
            d_kernel = tf.matmul(tf.concat(hs[:-1], 0), tf.concat(dzs[1:], 0), transpose_a=True)
            return tf.stack(dzs), d_kernel

        return tf.stack(hs), grad

    return recurrence


def lstm(inputs, kernel, recurrent_kernel, bias, return_sequences: bool = False):
    """`keras.layers.LSTM`'s computation (zero initial state, no mask) through the fused kernels.

    Args:
      inputs: `<float32>[batch, time, features]`, `time` known statically.
      kernel, recurrent_kernel, bias: the Keras LSTM cell's weights (`[features, 4·units]`, `[units, 4·units]`,
        `[4·units]`, gates i, f, c, o).

    Returns:
      `<float32>[batch, units]`, or `<float32>[batch, time, units]` with `return_sequences`.
    """
    steps = inputs.shape[1]
    x = tf.transpose(inputs, [1, 0, 2])  # Time-major: each step's rows are contiguous.
    batch = tf.shape(x)[1]
    # The input projection of all steps in one large product, hoisted out of the recurrence.
    xproj = tf.matmul(tf.reshape(x, [steps * batch, -1]), kernel) + bias
    hs = _recurrence(steps)(tf.reshape(xproj, [steps, batch, -1]), tf.convert_to_tensor(recurrent_kernel))
    return tf.transpose(hs, [1, 0, 2]) if return_sequences else hs[-1]
