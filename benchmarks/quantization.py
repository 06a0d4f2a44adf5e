"""Quantized LiteRT files beside the float one (and the ONNX file): size and test metric on the whole test set.

    python -m benchmarks.quantization RUN_DIR [--batch 100] [--json OUT]

RUN_DIR is a `python -m tf_rnn.train` run (its model.keras, config.json, data_spec.json). Every file is written by
`tf_rnn.export.export_litert` (int8 calibrated on 256 training inputs, as `--quantize int8` does) and scored in the
LiteRT interpreter on every test example; the Keras model's own score is the first row. Sizes are given against
the float file, which also holds `serve_uint8` and `step` (weights written once per signature), and against a
float file of `serving_default` alone, the signatures an int8 file has.
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
    from benchmarks.machine import write_result
    from tf_rnn import config as config_lib
    from tf_rnn import datasets, export, litert, onnx_export

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
        # Written as export writes files (unused buffers dropped), so that the sizes compare like for like.
        serving_only = len(litert.with_metadata(
            litert.convert(model, spec, args.batch, signatures=("serving_default",)), export.metadata(spec)))
        print(f"{'float32, serving only':24s} {serving_only / 1e6:7.3f} {serving_only / float_size:9.1%}")
        for path in files:
            runner = litert.Runner(path)
            head = "logits" if "logits" in runner(**{spec.input_name: x[:args.batch]}) else "predictions"
            outputs = np.concatenate([runner(**{spec.input_name: x[i:i + args.batch]})[head]
                                      for i in range(0, len(x) - args.batch + 1, args.batch)])
            row = {"format": path.name, "bytes": path.stat().st_size,
                   "of_float_size": round(path.stat().st_size / float_size, 3),
                   "of_serving_only_float_size": round(path.stat().st_size / serving_only, 3),
                   **_metrics(task.evaluate(outputs.astype(np.float64), y[:len(outputs)], spec))}
            rows.append(row)
            print(f"{path.name:24s} {row['bytes'] / 1e6:7.3f} {row['of_float_size']:9.1%} {_show(row):>24s}")
        # The ONNX file beside them, for the README's one table of every runtime.
        onnx_file = export.export_onnx(model, tmp, spec)
        session = onnx_export.Runner(onnx_file)
        outputs = np.concatenate([session(**{spec.input_name: x[i:i + 500]})[head] for i in range(0, len(x), 500)])
        row = {"format": "model.onnx (ONNX Runtime)", "bytes": onnx_file.stat().st_size,
               **_metrics(task.evaluate(outputs.astype(np.float64), y, spec))}
        rows.append(row)
        print(f"{'model.onnx':24s} {row['bytes'] / 1e6:7.3f} {'':9s} {_show(row):>24s}")
    if args.json:
        write_result(args.json, "benchmarks.quantization", run=str(run), dataset=spec.name,
                     test_examples=int(len(y)), config=json.loads((run / "config.json").read_text()),
                     float_serving_only_bytes=serving_only, rows=rows)
    return 0


def _metrics(m: dict) -> dict:
    return {k: round(v, 5) for k, v in m.items() if k in ("test_accuracy", "test_loss", "test_mse", "test_mae")}


def _show(row: dict) -> str:
    key = "test_accuracy" if "test_accuracy" in row else "test_mse"
    return f"{key} {row[key]:.4f}"


if __name__ == "__main__":
    sys.exit(main())
