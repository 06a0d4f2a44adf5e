"""tf_rnn: the classic "LSTM reads MNIST row by row" example, reproduced, fixed and surpassed in TF 2 / Keras 3."""

import os
import sys

# TensorFlow's C++ start-up chatter (CPU feature guards, oneDNN notices) buries the training output; users can
# still turn it back on by setting the variable themselves before importing tf_rnn.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# ... which absl's lines at TensorFlow's import ignore (oneDNN's notice on Intel CPUs): held to it there too.
from tf_rnn import quiet  # noqa: E402

quiet.install()


def _main_module() -> str:
    """The module `python -m MODULE` runs ('' otherwise), from the interpreter's own command line."""
    argv = list(getattr(sys, "orig_argv", []))[1:]
    while argv:
        arg = argv.pop(0)
        if arg == "-m":
            return argv[0] if argv else ""
        if arg in ("-X", "-W"):  # Interpreter options that take a value.
            argv = argv[1:]
        elif arg in ("-c", "-") or not arg.startswith("-"):
            break  # A script, a -c command or stdin: no -m.
    return ""


def register_keras_objects() -> None:
    """Registers tf_rnn's layers and losses with Keras (what `keras.saving.load_model` of a tf_rnn file needs)."""
    from tf_rnn import datasets, layers, models  # noqa: F401


# Keras deserialises a custom class only once the module that registers it has been imported: doing it here is
# what lets `import tf_rnn` + `keras.saving.load_model(...)` read every model tf_rnn writes. tf_rnn's own command
# lines skip it: importing Keras loads TensorFlow (seconds), and `--help` or a mistyped flag must answer before
# that; they register where they load a model.
if not _main_module().startswith("tf_rnn."):
    register_keras_objects()

__version__ = "0.1.0"
