"""What unrolling costs in LiteRT: each cell over 28 (rows) and 784 (pixels) steps — ops, file size, conversion
time, latency — beside the LSTM's one fused op.

    python -m benchmarks.litert_steps [--units 128] [--requests 50] [--json OUT]

Untrained one-layer models of the default width (the weights change none of this); batch 1; every CPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.litert_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "simple"])
    parser.add_argument("--views", nargs="+", default=["rows", "pixels"])
    parser.add_argument("--json", help="write the table as JSON here")
    args = parser.parse_args(argv)

    import numpy as np

    from benchmarks.machine import cpu_name, write_result
    from tf_rnn import litert
    from tf_rnn.config import resolve
    from tf_rnn.datasets import image_spec
    from tf_rnn.models import build_model

    spec, rows = image_spec("fashion_mnist"), []
    x = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    print(f"{cpu_name()}\n{'cell':7s} {'view':7s} {'steps':>5s} {'ops':>6s} {'fused':>5s} {'MB':>7s} "
          f"{'convert s':>9s} {'p50 ms':>7s}")
    for view in args.views:
        for cell in args.cells:
            model = build_model(resolve("seed", overrides=dict(cell=cell, units=args.units, sequence=view)))
            start = time.perf_counter()
            tflite = litert.convert(model, spec, batch=1)
            seconds = time.perf_counter() - start
            ops = litert.op_names(tflite)["serving_default"]
            runner = litert.Runner(tflite, num_threads=os.cpu_count())
            for _ in range(5):
                runner(images=x)
            times = []
            for _ in range(args.requests):
                t = time.perf_counter()
                runner(images=x)
                times.append((time.perf_counter() - t) * 1e3)
            row = {"cell": cell, "view": view, "steps": 28 if view == "rows" else 784, "ops": len(ops),
                   "fused_lstm_ops": ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM"), "bytes": len(tflite),
                   "convert_seconds": round(seconds, 1), "p50_ms": round(statistics.median(times), 3)}
            rows.append(row)
            print(f"{cell:7s} {view:7s} {row['steps']:5d} {row['ops']:6d} {row['fused_lstm_ops']:5d} "
                  f"{len(tflite) / 1e6:7.2f} {seconds:9.1f} {row['p50_ms']:7.2f}", flush=True)
    if args.json:
        write_result(args.json, "benchmarks.litert_steps", units=args.units, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
