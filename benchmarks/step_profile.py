"""Where a training step of the seed's model goes, op by op, from TensorFlow's profiler.

    python -m benchmarks.step_profile [--cell lstm|gru] [--steps 100] [--json OUT]

Trains the seed preset as `train_throughput`'s `tf_rnn` row does (`train_throughput.seed_model`: real
Fashion-MNIST, `fit`, the steps per execution `python -m tf_rnn.train` uses), warms up, then records `--steps`
steps with `tf.profiler` and sums each op's time on TensorFlow's executor threads. Reported per step: wall time,
the fused op pair's forward and backward ops, every other op together, and the largest others. Why: the throughput
benchmark says how fast, not where the time goes; the kernel's ops against the rest of the step decides whether
work on the kernel or around it can pay.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

from benchmarks import machine

# Profiler events that enclose ops or mark scheduling, not ops themselves.
NOT_OPS = ("ExecutorState", "ThreadpoolListener", "MemoryAllocation", "MemoryDeallocation", "ExecutorDoneCallback")


def op_times(xplane: Path) -> collections.Counter:
    """`{op type: total picoseconds}` over TensorFlow's executor threads (`tf_Compute`) in one profile."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(xplane.read_bytes())
    totals: collections.Counter = collections.Counter()
    for plane in (p for p in space.planes if p.name == "/host:CPU"):
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in (ln for ln in plane.lines if ln.name.startswith("tf_Compute")):
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and not name.startswith(NOT_OPS):  # "scope/op_name:OpType"
                    totals[name.rpartition(":")[2]] += event.duration_ps
    return totals


def profile(cell: str, steps: int) -> dict:
    import tensorflow as tf

    from benchmarks.train_throughput import _data, seed_model

    model, stream, per_call = seed_model(*_data(), cell)
    steps = -(-steps // per_call) * per_call
    model.fit(x=stream, steps_per_epoch=5 * per_call, epochs=1, verbose=0)  # Compiles, builds the kernel, warms up.
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        model.fit(x=stream, steps_per_epoch=steps, epochs=1, verbose=0)
        wall = time.perf_counter() - start
        tf.profiler.experimental.stop()
        (xplane,) = Path(logdir).rglob("*.xplane.pb")
        totals = op_times(xplane)
    ms = {op: ps / 1e9 / steps for op, ps in totals.items()}
    fused = {f"TfRnn{cell.capitalize()}Forward", f"TfRnn{cell.capitalize()}Backward"}
    others = {op: t for op, t in ms.items() if op not in fused}
    return {
        "cell": cell, "steps": steps, "steps_per_execution": per_call,
        "wall_ms_per_step": round(wall * 1e3 / steps, 3),
        "fused_ms_per_step": {op: round(ms.get(op, 0.0), 3) for op in sorted(fused)},
        "other_ops_ms_per_step": round(sum(others.values()), 3),
        "largest_other_ops_ms_per_step": {op: round(t, 3) for op, t in
                                          sorted(others.items(), key=lambda kv: -kv[1])[:10]},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--steps", type=int, default=100, help="steps profiled (rounded up to whole executions)")
    parser.add_argument("--json", help="write the result to this file")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: must be at least 1")
    result = profile(args.cell, args.steps)
    fused = sum(result["fused_ms_per_step"].values())
    print(f"{result['wall_ms_per_step']:.2f} ms per step: fused ops {fused:.2f} ms "
          f"({', '.join(f'{k} {v:.2f}' for k, v in result['fused_ms_per_step'].items())}), "
          f"every other op {result['other_ops_ms_per_step']:.2f} ms, the rest (between ops) "
          f"{result['wall_ms_per_step'] - fused - result['other_ops_ms_per_step']:.2f} ms")
    if args.json:
        machine.write_result(args.json, "benchmarks.step_profile", **result)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
