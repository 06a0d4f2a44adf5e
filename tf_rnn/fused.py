"""Fused: tf_rnn's CPU LSTM and GRU — a whole layer as one compiled op each way (kernels/rnn_sequence.cc).

On a CPU, TensorFlow trains a recurrent layer at the speed of its op dispatch (~1,000 small ops per training
step); these ops do the same arithmetic as `keras.layers.LSTM` / `keras.layers.GRU` in two dispatches (README,
Performance).

    python -m tf_rnn.fused build    # compile (or find) the kernel, print its path
    python -m tf_rnn.fused info     # is the fused path used here, and if not, why

The kernel is compiled from this package's source with `$CXX` (default g++) into `$TF_RNN_CACHE` (default
~/.cache/tf_rnn), once per source, TensorFlow, compiler and flags. It is built for AVX2 + FMA (not
`-march=native`, so a cache shared between machines holds code every AVX2 CPU runs), with its products also
compiled for AVX-512 and chosen at run time where the CPU has avx512f (`TF_RNN_KERNEL_ISA=avx2` forces the AVX2
ones); on CPUs without AVX2 and FMA, where its portable loops measured slower than Keras' LSTM, the path steps
aside. Builds are safe to race: a file lock serialises them, each writes a unique temporary file, test-loads it in
a separate process and only then publishes it under its final name. Used only in training steps, on a CPU, in
float32, outside XLA; never where a GPU or TPU is visible. `TF_RNN_FUSED=0` switches it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from tf_rnn import cli

KERNEL_SOURCE = Path(__file__).parent / "kernels" / "rnn_sequence.cc"
ENV_SWITCH = "TF_RNN_FUSED"  # "0" leaves Keras' LSTM everywhere; unset or anything else: the fused path.
CACHE_ENV = "TF_RNN_CACHE"
# The fast products need AVX2 and FMA; nothing else is assumed about the CPU (no -march=native).
CPU_FEATURES = ("avx2", "fma")
CXX_FLAGS = ["-O3", "-mavx2", "-mfma", "-shared", "-fPIC", "-w"]
# Which products the kernel runs, read by the kernel at each op call: "auto" (unset) is the widest the CPU has.
ISA_ENV = "TF_RNN_KERNEL_ISA"
ISA_CHOICES = ("auto", "avx2", "avx512")
# `--precision bfloat16` runs the LSTM's products on AMX tiles: the CPU flags Linux shows for them.
AMX_FEATURES = ("amx_bf16", "amx_tile", "avx512_bf16")
LOCK_TIMEOUT_S = 900  # A build takes 15-60 s; a lock held this long belongs to a process that hung.

_module = None
_tried = False


class BuildError(cli.RunError):
    """The kernel cannot be built or loaded here. `str()` is one line saying why."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "tf_rnn"))


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (x86 Linux), or None where they cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def unsupported_reason() -> str | None:
    """Why this host must not use the fused path (before any build), or None when it may."""
    import tensorflow as tf

    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"switched off ({ENV_SWITCH}=0)"
    if tf.config.list_logical_devices("GPU"):
        return "a GPU is visible (Keras' cuDNN kernel is the fast path there)"
    if tf.config.list_logical_devices("TPU"):
        return "a TPU is visible"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"the CPU is {platform.machine()}, not x86-64 with AVX2 (Keras' LSTM is faster than portable loops)"
    flags = cpu_flags()
    missing = [f for f in CPU_FEATURES if flags is None or f not in flags]
    if missing:
        return f"the CPU lacks {', '.join(missing)} (Keras' LSTM is faster than the portable loops there)"
    return None


def isa_problem() -> str | None:
    """What is wrong with `$TF_RNN_KERNEL_ISA` here, in one line, or None. The kernel refuses the same values; asked
    here first, a typo is one line before training instead of an op error inside its first step."""
    asked = os.environ.get(ISA_ENV) or "auto"
    if asked not in ISA_CHOICES:
        return f"{ISA_ENV}={asked} is not one of {', '.join(ISA_CHOICES)}; unset it for the CPU's widest"
    flags = cpu_flags()
    if asked == "avx512" and (flags is None or "avx512f" not in flags):
        return f"{ISA_ENV}=avx512, but this CPU lacks avx512f; unset it or set avx2"
    return None


def amx_problem() -> str | None:
    """Why `--precision bfloat16` cannot train here, in one line naming the fix, or None where it can."""
    reason = unsupported_reason()
    if reason:
        return (f"--precision bfloat16 runs in the fused kernel, which is not used here ({reason}); use "
                "--precision float32")
    flags = cpu_flags()
    missing = [f for f in AMX_FEATURES if flags is None or f not in flags]
    if missing:
        return f"--precision bfloat16 needs AMX tiles for bfloat16, and this CPU lacks {', '.join(missing)}; use " \
               "--precision float32"
    return None


def amx_available() -> bool:
    """Whether the LSTM ops' bfloat16 products (AMX tiles) can run here."""
    return amx_problem() is None


def compiler() -> tuple[str, str]:
    """(`$CXX` resolved to a path, its version line). Raises BuildError when there is none."""
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if not path:
        raise BuildError(f"no C++ compiler ({cxx}) on PATH; install g++ or set $CXX")
    done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    return path, (done.stdout.splitlines() or ["unknown version"])[0]


def build_command(cxx: str, out: Path, source: Path = KERNEL_SOURCE, defines: tuple[str, ...] = ()) -> list[str]:
    """The compiler command line; `source` and `defines` other than ours only for variant builds (the A/B builds
    of benchmarks/kernel_ab.py, the tests' emulated AVX-512 build)."""
    import tensorflow as tf

    return [cxx, *CXX_FLAGS, *[f"-D{d}" for d in defines], *tf.sysconfig.get_compile_flags(), str(source), "-o",
            str(out), *tf.sysconfig.get_link_flags()]


def kernel_path() -> Path:
    """Where the kernel for this source, TensorFlow, compiler (path and version) and flags lives in the cache."""
    import tensorflow as tf

    cxx, version = compiler()
    key = hashlib.sha256("\0".join([
        hashlib.sha256(KERNEL_SOURCE.read_bytes()).hexdigest(), tf.__version__, cxx, version,
        *build_command(cxx, Path("OUT")),
    ]).encode()).hexdigest()[:16]
    return cache_dir() / f"{KERNEL_SOURCE.stem}-{key}.so"


def load_error(path: Path) -> str | None:
    """Loads `path` in a separate process (a broken file can crash the loader): None if it loads, else why."""
    code = "import sys, tensorflow as tf; tf.load_op_library(sys.argv[1])"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300, env=env)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"exit code {done.returncode}"


def first_error(done: subprocess.CompletedProcess) -> str:
    """A failed compile in one line: the compiler's first line naming an error, else its last line, else the exit
    code (the last line alone is often a caret or `compilation terminated.`)."""
    lines = done.stderr.splitlines()
    errors = [line for line in lines if "error" in line] or lines[-1:] or [f"exit {done.returncode}"]
    return errors[0].strip()


def _compile(out: Path) -> None:
    """Compiles into a unique temporary file beside `out`, test-loads it, then publishes it atomically."""
    cxx, _ = compiler()
    print(f"tf_rnn: compiling the fused CPU RNN kernel into {out.parent} (once; 15-60 s)", file=sys.stderr,
          flush=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".so", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        done = subprocess.run(build_command(cxx, tmp), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BuildError(f"building {KERNEL_SOURCE.name} failed: {first_error(done)}")
        problem = load_error(tmp)
        if problem:
            raise BuildError(f"the freshly built {KERNEL_SOURCE.name} does not load: {problem}")
        tmp.replace(out)  # Atomic: a reader sees no file or the whole, tested one.
    finally:
        tmp.unlink(missing_ok=True)


def build() -> Path:
    """Compiles the kernel into the cache, or finds it there; safe when several processes start at once.

    A cached file that does not load (truncated, damaged, from a broken build) is rebuilt once.

    Raises:
      BuildError: no compiler, the build failed, or the built file does not load (the line says why).
    """
    from filelock import FileLock, Timeout

    reason = unsupported_reason()
    if reason and not reason.startswith("switched off"):
        raise BuildError(f"the fused kernel is not for this host: {reason}")
    out = kernel_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(out) + ".lock", timeout=LOCK_TIMEOUT_S):
            if out.exists():
                problem = load_error(out)
                if problem is None:
                    return out
                print(f"tf_rnn: cached kernel {out} does not load ({problem}); rebuilding it", file=sys.stderr)
                out.unlink()
            _compile(out)
    except Timeout:
        raise BuildError(f"another process has held {out}.lock for {LOCK_TIMEOUT_S} s; if none is building, "
                         "delete the lock file") from None
    return out


def kernels():
    """The compiled ops, or None: not for this host, or not buildable here (then a warning says why, once)."""
    import tensorflow as tf

    global _module, _tried
    if not _tried:
        _tried = True
        if unsupported_reason() is None:
            try:
                path = kernel_path()
                if path.exists():  # The common case, a good cached file, loads in-process at once.
                    try:
                        _module = tf.load_op_library(str(path))
                    except Exception:  # noqa: BLE001 - damaged: build() below checks and rebuilds it once.
                        pass
                if _module is None:
                    _module = tf.load_op_library(str(build()))
            except Exception as e:  # noqa: BLE001 - any failure means: use the pure-TensorFlow path.
                warnings.warn(f"tf_rnn: fused CPU RNN kernel unavailable ({e}); using Keras' own LSTM and GRU "
                              "layers", stacklevel=2)
    return _module


def available() -> bool:
    """Whether LSTMs and GRUs train through the fused path here (building the kernel first if it must)."""
    return kernels() is not None


def prepare(config) -> None:
    """Builds (or loads) the kernel before training when the config's model would use it, so that a first build
    is announced before the first step instead of stalling inside it; a bad `$TF_RNN_KERNEL_ISA` is a BuildError, and
    so is `--precision bfloat16` where it cannot run."""
    if getattr(config, "precision", "float32") == "bfloat16":
        problem = amx_problem() or (None if available() else "--precision bfloat16 needs the fused kernel, which "
                                    "does not build here (the warning above says why); use --precision float32")
        if problem:
            raise BuildError(problem)
    if config.cell in ("lstm", "gru") and config.activation == "tanh" and unsupported_reason() is None:
        problem = isa_problem()
        if problem:
            raise BuildError(problem)
        available()


def in_xla_context() -> bool:
    """Whether the op being traced is compiled by XLA (`jit_compile=True`), which has no kernel for our ops."""
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def _input_gradient(dz, x, kernel):
    """dx = dz·Wᵀ, back to `[batch, time, features]` (dz is time-major). One large product, which TensorFlow prunes
    inside a tf.function when nothing needs it (the first layer, whose input is data)."""
    import tensorflow as tf

    shape = tf.shape(x)
    dx = tf.matmul(tf.reshape(dz, [-1, tf.shape(dz)[-1]]), kernel, transpose_b=True)
    return tf.transpose(tf.reshape(dx, [shape[1], shape[0], shape[2]]), [1, 0, 2])  # Explicit: batch may be 0.


def _fused(forward: str, backward: str, last_only: bool, precision: str = "float32"):
    """A cell's op pair as one differentiable function of (x, kernel, recurrent_kernel, bias) → h.

    `precision`: "bfloat16" runs the LSTM ops' products on AMX tiles (bfloat16 operands, float32 sums and state).

    `last_only`: return only the last step's h, `<float32>[batch, units]`, and hand the backward op that step's
    gradient alone. Why not `h[:, -1]` of the whole sequence: its gradient is a `[batch, time, units]` tensor of zeros
    but for one step, which TensorFlow would build at every training step and the backward op read (a gain of about
    1% of the op pair's time, measured paired in one process).

    The forward op returns h time-major, `<float32>[time, batch, units]` (the kernel's products read it that way),
    so the last step is the contiguous `h[-1]`; with `return_sequences` it is transposed back to Keras' layout here,
    inside the custom gradient, so `d_h` arrives batch-major, `[batch, time, units]`, and the kernel reads it so.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def fused(x, kernel, recurrent_kernel, bias):
        ops = kernels()
        attrs = {"precision": precision} if precision != "float32" else {}  # The GRU ops have no such attribute.
        outputs = getattr(ops, forward)(x, kernel, recurrent_kernel, bias, **attrs)  # h, then what backward needs.
        h = outputs[0]  # Time-major, <float32>[time, batch, units]: see above.

        def grad(d_h):
            dz, d_kernel, d_recurrent_kernel, d_bias = getattr(ops, backward)(
                d_h, x, recurrent_kernel, *outputs, **attrs)
            return _input_gradient(dz, x, kernel), d_kernel, d_recurrent_kernel, d_bias

        return (h[-1] if last_only else tf.transpose(h, [1, 0, 2])), grad

    return fused


@functools.cache
def _op(cell: str, last_only: bool, precision: str = "float32"):
    # Made on first use, not at import: importing this module must not load TensorFlow (`--help` answers first).
    return _fused(f"tf_rnn_{cell}_forward", f"tf_rnn_{cell}_backward", last_only, precision)


def gru(inputs, kernel, recurrent_kernel, bias, return_sequences: bool = False):
    """`keras.layers.GRU`'s computation (reset_after=True, zero initial state, no mask) through the compiled kernels.

    Args:
      inputs: `<float32>[batch, time, features]`.
      kernel, recurrent_kernel, bias: the Keras GRU cell's weights (`[features, 3·units]`, `[units, 3·units]`,
        `[2, 3·units]`: input bias, then recurrent bias; gates z, r, h).

    Returns:
      `<float32>[batch, units]`, or `<float32>[batch, time, units]` with `return_sequences`.
    """
    import tensorflow as tf

    weights = [tf.convert_to_tensor(w) for w in (kernel, recurrent_kernel, bias)]
    return _op("gru", not return_sequences)(tf.convert_to_tensor(inputs, tf.float32), *weights)


def lstm(inputs, kernel, recurrent_kernel, bias, return_sequences: bool = False, precision: str = "float32"):
    """`keras.layers.LSTM`'s computation (zero initial state, no mask) through the compiled kernels.

    Args:
      inputs: `<float32>[batch, time, features]`.
      kernel, recurrent_kernel, bias: the Keras LSTM cell's weights (`[features, 4·units]`, `[units, 4·units]`,
        `[4·units]`, gates i, f, c, o).
      precision: "float32", or "bfloat16": the products' operands rounded to bfloat16 on AMX tiles (the op fails
        where the CPU has none: `amx_available()`), sums, state and gradients' sums in float32.

    Returns:
      `<float32>[batch, units]`, or `<float32>[batch, time, units]` with `return_sequences`.
    """
    import tensorflow as tf

    weights = [tf.convert_to_tensor(w) for w in (kernel, recurrent_kernel, bias)]
    return _op("lstm", not return_sequences, precision)(tf.convert_to_tensor(inputs, tf.float32), *weights)


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m tf_rnn.fused", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["build", "info"], help="build: compile or find the kernel and print its "
                        "path; info: whether the fused path is used here and, if not, why")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    reason, path = unsupported_reason(), None
    if reason is None:
        try:
            path = kernel_path()
        except BuildError as e:
            reason = str(e)
    if reason:
        print(f"fused CPU RNN kernel: not used here: {reason}; Keras' own layers train instead")
        return 0
    if path.exists():
        problem = isa_problem()
        products = problem or kernels().tf_rnn_kernel_isa().numpy().decode()
        print(f"fused CPU RNN kernel: used here for LSTM and GRU layers (kernel {path}); products: {products}")
    else:
        print(f"fused CPU RNN kernel: used here once built ({path} does not exist yet: `python -m tf_rnn.fused build`, "
              "or the first training run builds it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
