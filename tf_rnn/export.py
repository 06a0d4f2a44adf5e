"""Export: a trained .keras model → a portable SavedModel with float and uint8 serving signatures."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from tf_rnn import cli
from tf_rnn.cli import RunError, UsageError
from tf_rnn.data import DATASETS, IMAGE_SHAPE

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


def export_saved_model(model, out_dir: str | Path, dataset: str | None = None) -> Path:
    """Writes `model` as a SavedModel with two signatures, both returning `logits`, `probabilities`, `classes`:

    - `serving_default`: `images <float32>[batch, 28, 28]` with values in [0, 1] (checked: out-of-range or
      non-finite input is an InvalidArgument error, not a silently wrong answer);
    - `serve_uint8`: `images <uint8>[batch, 28, 28]` raw pixels, scaled inside the graph.

    Outputs: `logits <float32>[batch, 10]`, `probabilities <float32>[batch, 10]`, `classes <int64>[batch]`.

    Raises:
      FileExistsError: `out_dir` exists (an export is never overwritten).
    """
    import keras
    import tensorflow as tf

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose another --out (nothing was overwritten)")

    def heads(images):
        logits = model(images, training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1),
        }

    def serve_float(images):
        check = tf.debugging.assert_equal(
            tf.reduce_all((images >= 0.0) & (images <= 1.0)),  # NaN fails both comparisons.
            True,
            message="images must be float32 in [0, 1] (send raw 0-255 pixels as uint8 to serve_uint8)",
        )
        with tf.control_dependencies([check]):
            return heads(tf.identity(images))

    def serve_uint8(images):
        return heads(tf.cast(images, tf.float32) / 255.0)

    archive = keras.export.ExportArchive()
    archive.track(model)
    with generic_kernels(model):
        archive.add_endpoint(
            "serving_default", serve_float, [tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="images")]
        )
        archive.add_endpoint("serve_uint8", serve_uint8, [tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")])
        archive.write_out(str(out_dir), verbose=False)
    meta = out_dir / METADATA
    meta.parent.mkdir(parents=True, exist_ok=True)
    names = list(DATASETS[dataset].class_names) if dataset in DATASETS else None
    meta.write_text(json.dumps({"dataset": dataset, "class_names": names}, indent=2) + "\n")
    return out_dir


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
    parser.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                        help="class names to record for tf_rnn.predict (default: from the run's config.json)")
    args = parser.parse_args(argv)
    path = Path(args.model)
    if path.suffix != ".keras" or not path.is_file():
        raise UsageError(f"{path}: not a .keras file; pass the model.keras of a training run")
    if Path(args.out).exists():
        raise UsageError(f"--out {args.out}: exists; choose another folder (nothing was overwritten)")
    dataset = args.dataset
    config = path.parent / "config.json"
    if dataset is None and config.exists():
        dataset = json.loads(config.read_text()).get("dataset")
    import keras

    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - any load failure is the user's file: one line, not a traceback.
        raise RunError(f"{path}: cannot be loaded as a Keras model ({type(e).__name__}: {str(e).splitlines()[0]})")
    export_saved_model(model, args.out, dataset)
    print(f"wrote SavedModel {args.out} (signatures: serving_default <float32>[batch, 28, 28] in [0, 1], "
          f"serve_uint8 <uint8>[batch, 28, 28])")
    return 0


if __name__ == "__main__":
    sys.exit(main())
