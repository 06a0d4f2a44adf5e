"""Predict: run an export (SavedModel, .tflite, .onnx) or a .keras on images or sequences, one line each."""

from __future__ import annotations

import gzip
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn.datasets import DataSpec, image_spec
from tf_rnn.export import METADATA
from tf_rnn.mnist_files import IMAGES_MAGIC


class InputError(RunError):
    """An input file cannot be classified. `str()` is one line naming the file and what is wrong."""


def _as_images(array: np.ndarray, where: str, shape: tuple[int, int]) -> np.ndarray:
    """`[H, W]` or `[N, H, W]`, uint8 or float in [0, 1] → `<float32>[N, H, W]` in [0, 1]."""
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != tuple(shape):
        raise InputError(f"{where}: shape {list(array.shape)}; expected {list(shape)} or [N, {shape[0]}, {shape[1]}] "
                         "images")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{where}: dtype {array.dtype}; expected uint8 pixels or floats in [0, 1]")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    if array.min() < 0 or array.max() > 1:
        raise InputError(
            f"{where}: values in [{array.min():g}, {array.max():g}]; expected uint8 pixels or floats in [0, 1]"
        )
    return array


def npz_inputs(path: Path) -> tuple[np.ndarray, str]:
    """The inputs an `.npz` holds — its `x_test`, or its only array — and `path[key]` to name them in errors."""
    with np.load(path, allow_pickle=False) as z:
        key = "x_test" if "x_test" in z.files else z.files[0] if len(z.files) == 1 else None
        if key is None:
            raise InputError(f"{path}: .npz with arrays {z.files}; expected one array or x_test")
        return z[key], f"{path}[{key}]"


def read_images(path: Path, spec: DataSpec) -> np.ndarray:
    """Reads one file into `<float32>[N, H, W]` in [0, 1] (`spec.input_shape` is `[H, W]`).

    Raises:
      InputError: unreadable, not an image file we know, wrong size, NaN.
    """
    name = path.name.lower()
    try:
        if name.endswith(".png"):
            import tensorflow as tf

            image = tf.io.decode_png(path.read_bytes(), channels=1).numpy()[..., 0]
            return _as_images(image, str(path), spec.input_shape)
        if name.endswith(".npy"):
            return _as_images(np.load(path, allow_pickle=False), str(path), spec.input_shape)
        if name.endswith(".npz"):
            array, where = npz_inputs(path)
            return _as_images(array, where, spec.input_shape)
        if "idx3-ubyte" in name or name.endswith(".idx"):
            raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
            header = np.frombuffer(raw[:16], ">u4") if len(raw) >= 16 else None
            if header is None or header[0] != IMAGES_MAGIC:
                raise InputError(f"{path}: not an IDX image file (bad magic number)")
            n, rows, cols = (int(v) for v in header[1:])
            if len(raw) != 16 + n * rows * cols:
                raise InputError(f"{path}: {len(raw) - 16} pixel bytes, header promises {n}x{rows}x{cols}")
            return _as_images(np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols), str(path),
                              spec.input_shape)
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - e.g. tf's InvalidArgumentError for a corrupt PNG.
        raise InputError(f"{path}: cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    raise InputError(f"{path}: unknown file type; use PNG, .npy, .npz or IDX (*-idx3-ubyte[.gz])")


def read_sequences(path: Path, spec: DataSpec) -> np.ndarray:
    """Reads `.npy`, or `.npz` (`x_test` or its only array), of `[T, F]` or `[N, T, F]` → `<float32>[N, T, F]`.

    Raises:
      InputError: unreadable, another shape than the model's `[T, F]`, not numbers, NaN or infinite values.
    """
    name, where = path.name.lower(), str(path)
    try:
        if name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        elif name.endswith(".npz"):
            array, where = npz_inputs(path)
        else:
            raise InputError(f"{path}: unknown file type; {spec.name} sequences are read from .npy or .npz")
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    shape = list(spec.input_shape)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or list(array.shape[1:]) != shape:
        raise InputError(f"{where}: shape {list(array.shape)}; expected {shape} or [N, {shape[0]}, {shape[1]}] "
                         f"({spec.name})")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{where}: dtype {array.dtype}; expected numbers")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise InputError(f"{where}: contains NaN or infinite values")
    return array


def open_model(path: Path):
    """An export or a .keras: `(spec, load)`, the spec read first so that inputs are checked before TensorFlow or
    Keras load a model (a .tflite's or .onnx's runtime opens at once: the file holds the spec, and it starts in
    milliseconds).

    `load()` returns `(answer, runtime)`: `answer(<float32>[N, T, F]) -> {output: [N, ...]}` runs `serving_default`
    (a .tflite in batches of the size it was exported at, the last one padded); `runtime` names what answers,
    e.g. "LiteRT interpreter (ai-edge-litert 2.3.0)".

    Raises:
      UsageError: not a file or folder of a kind tf_rnn writes, or its runtime is not installed.
    """
    from tf_rnn import export

    suffix = path.suffix.lower()
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise UsageError(f"{path}: not a SavedModel folder (no saved_model.pb); export one with "
                             "python -m tf_rnn.export, or pass its model.tflite/model.onnx")
        spec = _spec(_read_json(path / METADATA))

        def load_saved_model():
            import tensorflow as tf

            serve = tf.saved_model.load(str(path)).signatures["serving_default"]
            return (lambda x: {k: v.numpy() for k, v in serve(**{spec.input_name: tf.constant(x)}).items()},
                    f"TensorFlow {tf.__version__} (SavedModel)")

        return spec, load_saved_model
    if not path.is_file():
        raise UsageError(f"{path}: no such file or folder")
    if suffix in (".tflite", ".onnx"):
        export.require("litert" if suffix == ".tflite" else "onnx", f"{path} ({suffix})")
        from tf_rnn import litert, onnx_export

        try:
            runner = (litert.Runner if suffix == ".tflite" else onnx_export.Runner)(path)
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file: one line.
            raise RunError(f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        spec = _spec(runner.meta or _read_json(path.parent / METADATA))
        (shape, _), = runner.inputs().values()
        return spec, lambda: (_batched(lambda x: runner(**{spec.input_name: x}), shape[0]), runner.runtime)
    if suffix == ".keras":
        spec = export.read_spec(path.parent, None)

        def load_keras():
            import keras

            import tf_rnn

            tf_rnn.register_keras_objects()
            try:
                model = keras.saving.load_model(path)
            except Exception as e:  # noqa: BLE001 - the user's file: one line, not a traceback.
                raise RunError(f"{path}: cannot be loaded as a Keras model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0]})") from None
            from tf_rnn.models import inference_function

            forward = inference_function(model, spec.task_type.serving_outputs)
            return (lambda x: {k: np.asarray(v) for k, v in forward(np.asarray(x, np.float32)).items()},
                    f"Keras {keras.__version__}")

        return spec, load_keras
    raise UsageError(f"{path}: not a model tf_rnn reads; pass a SavedModel folder, .tflite, .onnx or .keras")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _spec(meta: dict) -> DataSpec:
    # Exports older than the task registry hold only class names: they are image classifiers.
    return DataSpec.from_dict(meta["spec"]) if "spec" in meta else image_spec(meta.get("dataset"))


def _batched(answer, batch: int | None):
    """`answer` for a runtime that takes exactly `batch` inputs (None: any number)."""
    if batch is None:
        return answer

    def run(x):
        chunks = []
        for start in range(0, len(x), batch):
            part = x[start:start + batch]
            padded = np.concatenate([part, np.zeros((batch - len(part), *part.shape[1:]), part.dtype)])
            chunks.append({k: v[:len(part)] for k, v in answer(padded).items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    return run


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m tf_rnn.predict", description=__doc__)
    parser.add_argument("model", help="an export (a SavedModel folder, model.tflite, model.onnx: tf_rnn.export) "
                        "or a run's model.keras")
    parser.add_argument("files", nargs="+", help="images: PNG (28x28 grayscale), .npy/.npz, IDX files; other "
                        "datasets: .npy/.npz of [N, T, F] sequences")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size}: must be >= 1")
    spec, load = open_model(Path(args.model))
    read = read_images if spec.image else read_sequences
    batches = [(path, read(Path(path), spec)) for path in args.files]
    answer, runtime = load()
    print(f"answered by {runtime}: {args.model}", file=sys.stderr)
    for path, inputs in batches:
        for start in range(0, len(inputs), args.batch_size):
            out = answer(inputs[start:start + args.batch_size])
            for k in range(len(next(iter(out.values())))):
                where = f"{path}[{start + k}]" if len(inputs) > 1 else str(path)
                print(f"{where}\t{spec.task_type.format_output(out, k, spec)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
