"""Export: a trained .keras model → a portable SavedModel whose signatures follow the dataset's task."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn import datasets
from tf_rnn.datasets import DataSpec, image_spec

METADATA = "assets.extra/tf_rnn.json"  # Read by tf_rnn.predict; TF Serving ignores assets.extra.


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

    Args:
      spec: what the model takes and returns (`datasets.load`, or the run's data_spec.json); an image dataset's
        name or None mean a row-wise image classifier.

    Raises:
      FileExistsError: `out_dir` exists (an export is never overwritten).
    """
    import keras
    import tensorflow as tf

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another --out (nothing was overwritten)")
    if not isinstance(spec, DataSpec):
        spec = image_spec(spec)

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
        archive.write_out(str(out_dir), verbose=False)
    meta = out_dir / METADATA
    meta.parent.mkdir(parents=True, exist_ok=True)
    # `dataset` and `class_names` as before; the rest tells tf_rnn.predict what to read and print.
    meta.write_text(json.dumps({"dataset": spec.name, "class_names": list(spec.class_names) or None,
                                "spec": spec.to_dict()}, indent=2) + "\n")
    return out_dir


def describe(spec: DataSpec) -> str:
    """The signatures in one line, for the CLI's message."""
    shape = ", ".join(str(d) for d in spec.input_shape)
    outputs = spec.task_type.describe_outputs(spec)
    text = f"serving_default <float32>[batch, {shape}]"
    if spec.image:
        text += f" in [0, 1], serve_uint8 <uint8>[batch, {shape}]"
    return f"{text} -> {outputs}"


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
    parser.add_argument("--out", required=True, help="SavedModel folder to create (must not exist)")
    parser.add_argument("--dataset", choices=datasets.IMAGE_DATASETS, default=None,
                        help="for a model without data_spec.json beside it (a TF1 conversion): the image dataset "
                        "whose class names to record (default: from the run's config.json)")
    args = parser.parse_args(argv)
    path = Path(args.model)
    if path.suffix != ".keras" or not path.is_file():
        raise UsageError(f"{path}: not a .keras file; pass the model.keras of a training run")
    if Path(args.out).exists():
        raise UsageError(f"--out {args.out}: exists; choose another folder (nothing was overwritten)")
    spec = read_spec(path.parent, args.dataset)
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
    export_saved_model(model, args.out, spec)
    print(f"wrote SavedModel {args.out} ({describe(spec)})")
    return 0


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
