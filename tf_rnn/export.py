"""Export: a trained .keras model → a SavedModel, a LiteRT .tflite, an .onnx, whose signatures follow the task."""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn import datasets, streaming
from tf_rnn.datasets import DataSpec, image_spec
from tf_rnn.litert import QUANTIZATIONS
from tf_rnn.onnx_export import OPSET

METADATA = "assets.extra/tf_rnn.json"  # Read by tf_rnn.predict; TF Serving ignores assets.extra.
FORMATS = ("saved_model", "litert", "onnx")
# The optional runtimes each format needs (pyproject's `export` extra, with the versions tested).
EXTRAS = {"litert": ("ai_edge_litert", "ai-edge-litert"), "onnx": ("tf2onnx", "tf2onnx and onnxruntime")}


@contextlib.contextmanager
def generic_kernels(model):
    """Traces LSTM/GRU layers with the generic kernel even on a GPU host.

    Keras picks cuDNN at trace time when a GPU is visible, and a SavedModel traced that way holds `CudnnRNN*` ops
    that fail to load on CPU-only serving hosts. The weights are the same for both kernels, so turning cuDNN off
    while tracing costs nothing in accuracy.
    """
    import keras

    layers = [l for l in model._flatten_layers() if isinstance(l, (keras.layers.LSTM, keras.layers.GRU))]
    saved = [l.use_cudnn for l in layers]
    for layer in layers:
        layer.use_cudnn = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved):
            layer.use_cudnn = value


def export_saved_model(model, out_dir: str | Path, spec: DataSpec | str | None = None) -> Path:
    """Writes `model` as a SavedModel whose signatures follow the dataset's task.

    `serving_default` takes the dataset's `<float32>[batch, T, F]`: `images` `[batch, 28, 28]` in [0, 1] for
    image datasets (whatever the sequence view: it is inside the model), else `sequences`. Out-of-range (images)
    or non-finite input is an InvalidArgument error, not a silently wrong answer. Image datasets also get
    `serve_uint8`: `images <uint8>[batch, 28, 28]`, raw pixels scaled inside the graph.

    Outputs are the task's (`tasks.Task.serving_outputs`): classification `logits`/`probabilities
    <float32>[batch, classes]`, `classes <int64>[batch]`; per-step classification the same with a `steps` axis;
    regression `predictions <float32>[batch, targets]`, in the targets' units.

    tf_rnn's models also get `step(inputs_t <float32>[batch, F], h_0, c_0, …)` → the step's outputs and the new
    state, and `zero_state(batch_size <int32>[])` → the state before the first step (tf_rnn.streaming).

    Args:
      spec: what the model takes and returns (`datasets.load`, or the run's data_spec.json); an image dataset's
        name or None mean a row-wise image classifier.

    Raises:
      FileExistsError: `out_dir` exists (an export is never overwritten).
    """
    import keras
    import tensorflow as tf

    from tf_rnn.models import float32_model

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another --out (nothing was overwritten)")
    if not isinstance(spec, DataSpec):
        spec = image_spec(spec)
    model = float32_model(model)

    def heads(inputs):
        return spec.task_type.serving_outputs(model(inputs, training=False))

    def serve_float(inputs):
        if spec.image:
            ok = tf.reduce_all((inputs >= 0.0) & (inputs <= 1.0))  # NaN fails both comparisons.
            message = "images must be float32 in [0, 1] (send raw 0-255 pixels as uint8 to serve_uint8)"
        else:
            ok = tf.reduce_all(tf.math.is_finite(inputs))
            message = "sequences must be finite float32 values"
        with tf.control_dependencies([tf.debugging.assert_equal(ok, True, message=message)]):
            return heads(tf.identity(inputs))

    def serve_uint8(images):
        return heads(tf.cast(images, tf.float32) / 255.0)

    archive = keras.export.ExportArchive()
    archive.track(model)
    with generic_kernels(model):
        archive.add_endpoint(
            "serving_default", serve_float, [tf.TensorSpec([None, *spec.input_shape], tf.float32, name=spec.input_name)]
        )
        if spec.image:
            archive.add_endpoint(
                "serve_uint8", serve_uint8, [tf.TensorSpec([None, *spec.input_shape], tf.uint8, name="images")]
            )
        if streaming.supports(model):  # Any other Keras model still exports, without the step signatures.
            archive.add_endpoint("step", *streaming.signature(model, spec, None))
            archive.add_endpoint("zero_state", lambda batch_size: streaming.zero_state(model, batch_size),
                                 [tf.TensorSpec([], tf.int32, name="batch_size")])
        archive.write_out(str(out_dir), verbose=False)
    write_metadata(out_dir, spec)
    return out_dir


def metadata(spec: DataSpec) -> dict:
    """What tf_rnn.predict needs to read inputs and print outputs; `dataset` and `class_names` as older exports."""
    return {"dataset": spec.name, "class_names": list(spec.class_names) or None, "spec": spec.to_dict()}


def write_metadata(out_dir: Path, spec: DataSpec) -> None:
    meta = Path(out_dir) / METADATA
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(metadata(spec), indent=2) + "\n")


def export_litert(model, out_dir: str | Path, spec: DataSpec, batch: int = 1, quantize=(), representative=None):
    """Writes `model.tflite` (float32) and `model_<q>.tflite` for each of `quantize` into `out_dir`.

    Built-in ops only, each LSTM layer one fused `UNIDIRECTIONAL_SEQUENCE_LSTM`, at the fixed `batch` (the fused op
    sizes its state at conversion); signatures `serving_default`, images' `serve_uint8`, and `step` (not in int8).

    Returns:
      The files written.
    """
    from tf_rnn import litert
    from tf_rnn.models import float32_model

    model = float32_model(model)  # LiteRT's built-in ops have no bfloat16 MatMul.
    out_dir, written = Path(out_dir), []
    out_dir.mkdir(parents=True, exist_ok=True)
    for q in (None, *quantize):
        path = out_dir / (f"model_{q}.tflite" if q else "model.tflite")
        tflite = litert.convert(model, spec, batch, q, representative)
        path.write_bytes(litert.with_metadata(tflite, {**metadata(spec), "batch": batch, "quantize": q}))
        written.append(path)
    return written


def export_onnx(model, out_dir: str | Path, spec: DataSpec) -> Path:
    """Writes `model.onnx` into `out_dir`: the ONNX LSTM/GRU/RNN ops, a dynamic batch, `serving_default`'s float
    input and outputs (tf_rnn.onnx_export)."""
    from tf_rnn import onnx_export
    from tf_rnn.models import float32_model

    model = float32_model(model)  # ONNX Runtime's CPU kernels have no bfloat16 MatMul.
    path = Path(out_dir) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onnx_export.convert(model, spec, metadata(spec)).SerializeToString())
    return path


def require(fmt: str, what: str | None = None) -> None:
    """A one-line error naming the extra when `fmt`'s runtime is not installed; `what` needs it (default: the flag)."""
    import importlib.util

    if fmt in EXTRAS and importlib.util.find_spec(EXTRAS[fmt][0]) is None:
        raise UsageError(f"{what or '--format ' + fmt} needs {EXTRAS[fmt][1]}, not installed: pip install -e "
                         "'.[export]' in the tf_rnn checkout")


def describe(spec: DataSpec) -> str:
    """The signatures in one line, for the CLI's message."""
    shape = ", ".join(str(d) for d in spec.input_shape)
    outputs = spec.task_type.describe_outputs(spec)
    text = f"serving_default <float32>[batch, {shape}]"
    if spec.image:
        text += f" in [0, 1], serve_uint8 <uint8>[batch, {shape}]"
    return f"{text} -> {outputs}; step and zero_state"


def representative_inputs(run_dir: Path, spec: DataSpec, n: int = 256):
    """`<float32>[n, T, F]` training inputs of the run beside the model, for int8 calibration."""
    import numpy as np

    from tf_rnn import config as config_lib

    path = run_dir / "config.json"
    if not path.exists():
        raise UsageError(f"--quantize int8 calibrates on training data: {path} (the run's config) is missing")
    config = config_lib.resolve(file_values=config_lib.load_json(path))
    arrays, _ = datasets.load(config)
    x = arrays.x_train[np.random.default_rng(0).permutation(len(arrays.x_train))[:n]]
    return x.astype(np.float32) / 255.0 if spec.image else x.astype(np.float32)


def saved_model_op_types(export_dir: str | Path) -> set[str]:
    """Every op type in the SavedModel's graphs, including those inside its functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString((Path(export_dir) / "saved_model.pb").read_bytes())
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    return ops


@cli.entry_point()
def main(argv=None) -> int:
    parser = cli.OneLineParser(prog="python -m tf_rnn.export", description=__doc__)
    parser.add_argument("model", help="a .keras file written by tf_rnn.train (its model.keras)")
    parser.add_argument("--out", required=True, help="folder to create (must not exist): the SavedModel's files, "
                        "model.tflite, model_<quantize>.tflite, model.onnx")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=["saved_model"],
                        help="one or several (default: saved_model)")
    parser.add_argument("--batch", type=int, default=1, help="litert: the batch the file runs at (the fused LSTM "
                        "sizes its state at conversion; the file refuses any other; default 1)")
    parser.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS, default=[],
                        help="litert: also write model_<q>.tflite: float16 weights, dynamic (int8 weights), int8 "
                        "(integers throughout, calibrated on 256 training inputs of the run)")
    parser.add_argument("--dataset", choices=datasets.IMAGE_DATASETS, default=None,
                        help="for a model without data_spec.json beside it (a TF1 conversion): the image dataset "
                        "whose class names to record (default: from the run's config.json)")
    args = parser.parse_args(argv)
    formats = list(dict.fromkeys(args.format))
    path = Path(args.model)
    if path.suffix != ".keras" or not path.is_file():
        raise UsageError(f"{path}: not a .keras file; pass the model.keras of a training run")
    if Path(args.out).exists():
        raise UsageError(f"--out {args.out}: exists; choose another folder (nothing was overwritten)")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be >= 1")
    if args.quantize and "litert" not in formats:
        raise UsageError("--quantize applies to --format litert; add it")
    for fmt in formats:
        require(fmt)
    spec = read_spec(path.parent, args.dataset)
    representative = representative_inputs(path.parent, spec) if "int8" in args.quantize else None
    import keras

    import tf_rnn

    tf_rnn.register_keras_objects()  # The file names tf_rnn's layers and loss; a CLI imports them only now.

    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's file: one line, not a traceback.
        raise RunError(f"{path}: cannot be loaded as a Keras model ({type(e).__name__}: {str(e).splitlines()[0]})")
    takes = tuple(getattr(model, "input_shape", (None, *spec.input_shape))[1:])
    if takes != tuple(spec.input_shape):
        raise RunError(f"{path}: takes {list(takes)} but {spec.name} is {list(spec.input_shape)}; "
                       "export the model.keras of the run whose data_spec.json/config.json is beside it")
    out = Path(args.out)
    # Written beside, then renamed: a conversion that fails leaves no half-written --out behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    partial = scratch / out.name
    try:
        written = export_formats(model, partial, spec, formats, args.batch, args.quantize, representative)
        partial.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for line in written:
        print(line.replace(str(partial), str(out)))
    return 0


def export_formats(model, out: Path, spec: DataSpec, formats, batch=1, quantize=(), representative=None) -> list:
    """Writes each of `formats` into the new folder `out`; returns a line for each file written. Every format serves
    float32 (`models.float32_model`)."""
    lines = []
    if "saved_model" in formats:
        export_saved_model(model, out, spec)
        lines.append(f"wrote SavedModel {out} ({describe(spec)})")
    else:
        write_metadata(out, spec)
    if "litert" in formats:
        for file in export_litert(model, out, spec, batch, quantize, representative):
            lines.append(f"wrote {file} (LiteRT, batch {batch}, {file.stat().st_size / 1e6:.2f} MB)")
    if "onnx" in formats:
        file = export_onnx(model, out, spec)
        lines.append(f"wrote {file} (ONNX opset {OPSET}, batch dynamic, {file.stat().st_size / 1e6:.2f} MB)")
    return lines


def read_spec(run_dir: Path, dataset: str | None) -> DataSpec:
    """A run's data_spec.json; else (older runs, TF1 conversions) an image classifier of `--dataset` or of the
    config.json's dataset."""
    spec_file, config = run_dir / "data_spec.json", run_dir / "config.json"
    if dataset is None and spec_file.exists():
        return DataSpec.from_dict(json.loads(spec_file.read_text()))
    if dataset is None and config.exists():
        dataset = json.loads(config.read_text()).get("dataset")
    return image_spec(dataset)


if __name__ == "__main__":
    sys.exit(main())
