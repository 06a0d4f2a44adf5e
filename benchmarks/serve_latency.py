"""Serving latency of an exported SavedModel: p50/p99 per request at batch 1 and 256.

    python -m benchmarks.serve_latency [MODEL_DIR] [--requests 300] [--json OUT]

Without MODEL_DIR it exports the `seed` preset's (untrained: latency does not depend on the weights) model to a
temporary folder first. Requests go through `tf.saved_model.load(...).signatures["serve_uint8"]`, as a serving
process without tf_rnn would make them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_latency", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", nargs="?", help="an exported SavedModel (default: export the seed model)")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--json", help="write the table as JSON here (the file the README quotes)")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    model_dir = args.model_dir
    if model_dir is None:
        from tf_rnn.config import resolve
        from tf_rnn.export import export_saved_model
        from tf_rnn.models import build_model

        model_dir = export_saved_model(build_model(resolve("seed")), Path(tempfile.mkdtemp()) / "sm")
    serve = tf.saved_model.load(str(model_dir)).signatures["serve_uint8"]
    rng = np.random.default_rng(0)
    print(f"{'batch':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'images/s at p50':>16s}")
    rows = []
    for batch in args.batch_sizes:
        images = tf.constant(rng.integers(0, 256, (batch, 28, 28), dtype=np.uint8))
        for _ in range(20):  # Warm-up: the first calls build the function's kernels.
            serve(images=images)["classes"].numpy()
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            serve(images=images)["classes"].numpy()
            times.append((time.perf_counter() - start) * 1e3)
        p50, p99 = statistics.median(times), percentile(times, 99)
        print(f"{batch:6d} {p50:8.2f} {p99:8.2f} {batch / p50 * 1e3:16,.0f}")
        rows.append({"batch": batch, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2),
                     "images_per_s_at_p50": round(batch / p50 * 1e3)})
    if args.json:
        command = "python -m benchmarks.serve_latency " + " ".join(sys.argv[1:])
        Path(args.json).write_text(json.dumps({"command": command, "requests": args.requests, "rows": rows},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
