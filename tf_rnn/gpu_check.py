"""GPU check: on a machine with GPUs, train on all of them, confirm the cuDNN kernel, and export a CPU-portable model.

Run it where a GPU is visible (CI here has none):

    python -m tf_rnn.gpu_check --dataset fashion_mnist --workdir /tmp/gpu_check

It prints one line per check and exits non-zero when any fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tf_rnn.cli import OneLineParser, plural
from tf_rnn.datasets import IMAGE_DATASETS


def traced_ops(model) -> set[str]:
    """Op types of the model's forward pass as traced now, including those inside functions."""
    import tensorflow as tf

    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(
        tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    ).graph.as_graph_def()
    return {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m tf_rnn.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=IMAGE_DATASETS)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workdir", required=True, help="a new folder for the check's training run")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from tf_rnn.config import resolve
    from tf_rnn.distribute import get_strategy
    from tf_rnn.export import saved_model_op_types
    from tf_rnn.models import build_model
    from tf_rnn.train import train_and_evaluate

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        print("error: no GPU visible to TensorFlow (tf.config.list_physical_devices('GPU') is empty)", file=sys.stderr)
        return 1
    failures = 0

    def check(ok: bool, what: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {what}")

    strategy = get_strategy("auto")
    check(strategy.num_replicas_in_sync == len(gpus), f"strategy 'auto' uses all {len(gpus)} GPU(s): "
          f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    config = resolve(overrides=dict(dataset=args.dataset, data_dir=args.data_dir, steps=args.steps, epochs=2))
    with strategy.scope():
        ops = traced_ops(build_model(config))
    check(any("Cudnn" in op for op in ops), "LSTM layers trace to the cuDNN kernel (CudnnRNN* ops) on the GPU")
    metrics = train_and_evaluate(config, Path(args.workdir), strategy=strategy)
    check(metrics["num_replicas_in_sync"] == len(gpus),
          f"trained {plural(metrics['steps'], 'step')} on {plural(len(gpus), 'GPU')} at "
          f"{metrics['train_samples_per_second']} samples/s; test accuracy {metrics['test_accuracy']:.4f}")
    export_ops = saved_model_op_types(Path(args.workdir) / "saved_model")
    check(not any("Cudnn" in op for op in export_ops), "the exported SavedModel has no cuDNN ops (serves on CPUs)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
