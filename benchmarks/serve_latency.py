"""Serving latency of one model in every runtime: SavedModel (TensorFlow), LiteRT (float32, int8), ONNX Runtime.

    python -m benchmarks.serve_latency [RUN_DIR] [--requests 300] [--batch-sizes 1 256] [--json OUT]

RUN_DIR is a `python -m tf_rnn.train` run; without it the `seed` preset's untrained model (latency does not depend
on the weights; int8 then calibrates on random images). Each runtime gets `serving_default`'s float input, as a
serving process without tf_rnn would send it: `tf.saved_model.load(...).signatures`, the `ai-edge-litert`
interpreter (a file per batch size: the fused LSTM's batch is fixed), an `onnxruntime.InferenceSession`. All use
every CPU. p50/p99 over `--requests` after 20 warm-up requests; file size of what a deployment ships.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_latency", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a tf_rnn.train run (default: the untrained seed model)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--json", help="write the table as JSON here (the file the README quotes)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    import tf_rnn
    from benchmarks.machine import cpu_name, write_result
    from tf_rnn import export, litert
    from tf_rnn.config import resolve
    from tf_rnn.datasets import image_spec
    from tf_rnn.models import build_model

    tf_rnn.register_keras_objects()
    if args.run_dir:
        run = Path(args.run_dir)
        model = keras.saving.load_model(run / "model.keras")
        spec = export.read_spec(run, None)
        calibration = export.representative_inputs(run, spec)
    else:
        model, spec = build_model(resolve("seed")), image_spec(None)
        calibration = np.random.default_rng(1).random((256, 28, 28)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp())
    saved_model = export.export_saved_model(model, tmp / "saved_model", spec)
    onnx_file = export.export_onnx(model, tmp / "onnx", spec)
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)

    print(f"{cpu_name()}\n{'runtime':28s} {'batch':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'examples/s':>11s} {'MB':>7s}")
    rows = []
    for batch in args.batch_sizes:
        x = rng.random((batch, *spec.input_shape)).astype(np.float32)
        files = export.export_litert(model, tmp / f"litert_{batch}", spec, batch, ["int8"], calibration)
        contenders = [
            ("SavedModel (TensorFlow)", saved_model, lambda: serve(**{spec.input_name: tf.constant(x)})),
            ("ONNX Runtime", onnx_file, lambda: session.run(None, {spec.input_name: x})),
        ]
        for path, label in zip(files, ("LiteRT float32", "LiteRT int8")):
            runner = litert.Runner(path, num_threads=os.cpu_count())
            contenders.append((label, path, lambda runner=runner: runner(**{spec.input_name: x})))
        for label, path, call in contenders:
            for _ in range(20):  # Warm-up: first calls build kernels and plans.
                call()
            times = []
            for _ in range(args.requests):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e3)
            p50, p99 = statistics.median(times), percentile(times, 99)
            row = {"runtime": label, "batch": batch, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                   "examples_per_s_at_p50": round(batch / p50 * 1e3), "bytes": _size(Path(path))}
            rows.append(row)
            print(f"{label:28s} {batch:6d} {p50:8.2f} {p99:8.2f} {row['examples_per_s_at_p50']:11,d} "
                  f"{row['bytes'] / 1e6:7.2f}", flush=True)
    if args.json:
        from importlib.metadata import version

        write_result(args.json, "benchmarks.serve_latency", model=model.name, requests=args.requests,
                     versions={"tensorflow": tf.__version__, "onnxruntime": onnxruntime.__version__,
                               "ai-edge-litert": version("ai-edge-litert")}, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
