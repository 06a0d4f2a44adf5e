"""Quantized LiteRT files beside the float one: file size and test accuracy on the whole test set.

    python -m benchmarks.quantization RUN_DIR [--batch 100] [--json OUT]

RUN_DIR is a `python -m tf_rnn.train` run (its model.keras, config.json, data_spec.json). Every file is written by
`tf_rnn.export.export_litert` (int8 calibrated on 256 training inputs, as `--quantize int8` does) and scored in the
LiteRT interpreter on every test example; the Keras model's own score is the first row.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quantization", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a tf_rnn.train run directory")
    parser.add_argument("--batch", type=int, default=100, help="the files' batch (must divide the test set)")
    parser.add_argument("--json", help="write the table as JSON here (the file the README quotes)")
    args = parser.parse_args(argv)

    import keras
    import numpy as np

    import tf_rnn
    from benchmarks.machine import cpu, cpu_name
    from tf_rnn import config as config_lib
    from tf_rnn import datasets, export, litert

    tf_rnn.register_keras_objects()
    run = Path(args.run_dir)
    config = config_lib.resolve(file_values=config_lib.load_json(run / "config.json"))
    arrays, spec = datasets.load(config)
    x = arrays.x_test.astype(np.float32) / 255.0 if spec.image else arrays.x_test.astype(np.float32)
    y = arrays.y_test
    model = keras.saving.load_model(run / "model.keras")
    task = spec.task_type

    def score(outputs):
        return task.evaluate(outputs.astype(np.float64), y, spec)

    keras_outputs = np.concatenate([np.asarray(model(x[i:i + 500], training=False)) for i in range(0, len(x), 500)])
    rows = [{"format": "Keras (float32)", "bytes": None, **_metrics(score(keras_outputs))}]
    print(f"{'file':24s} {'MB':>7s} {'of float':>9s} {'metric':>24s}")
    print(f"{'Keras model':24s} {'':7s} {'':9s} {_show(rows[0]):>24s}")
    with tempfile.TemporaryDirectory() as tmp:
        files = export.export_litert(model, tmp, spec, args.batch, list(litert.QUANTIZATIONS),
                                     export.representative_inputs(run, spec))
        float_size = files[0].stat().st_size
        for path in files:
            runner = litert.Runner(path)
            head = "logits" if "logits" in runner(**{spec.input_name: x[:args.batch]}) else "predictions"
            outputs = np.concatenate([runner(**{spec.input_name: x[i:i + args.batch]})[head]
                                      for i in range(0, len(x) - args.batch + 1, args.batch)])
            row = {"format": path.name, "bytes": path.stat().st_size,
                   "of_float_size": round(path.stat().st_size / float_size, 3),
                   **_metrics(task.evaluate(outputs.astype(np.float64), y[:len(outputs)], spec))}
            rows.append(row)
            print(f"{path.name:24s} {row['bytes'] / 1e6:7.3f} {row['of_float_size']:9.1%} {_show(row):>24s}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python -m benchmarks.quantization " + " ".join(sys.argv[1:]), "cpu": cpu(),
            "cpu_name": cpu_name(), "run": str(run), "dataset": spec.name, "test_examples": int(len(y)),
            "config": json.loads((run / "config.json").read_text()), "rows": rows}, indent=2) + "\n")
    return 0


def _metrics(m: dict) -> dict:
    return {k: round(v, 5) for k, v in m.items() if k in ("test_accuracy", "test_loss", "test_mse", "test_mae")}


def _show(row: dict) -> str:
    key = "test_accuracy" if "test_accuracy" in row else "test_mse"
    return f"{key} {row[key]:.4f}"


if __name__ == "__main__":
    sys.exit(main())
