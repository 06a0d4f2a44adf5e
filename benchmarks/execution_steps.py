"""Steps per execution on a real run: `python -m tf_rnn.train` at two values, the same preset, epochs and data.

    python -m benchmarks.execution_steps [--preset default] [--values 2 10] [--epochs 2] [--rounds 2] [--json OUT]

Why: the default preset's epoch has 422 steps (2 × 211), so before whole epochs were read one dataset per epoch
(`tf_rnn.pipeline.training_epochs`) it ran 2 steps per execution, the largest divisor of 422 up to the default 10.
Each run is `python -m tf_rnn.train` in a fresh process and work directory, values alternating round-robin so that
the machine's drift hurts both alike. Reported per value: the median over runs of the steady epoch time (every epoch
but the first, which traces and builds), samples/s from it, the ratio to the first value, and whether every run
ended at the same weights (it must: steps per execution change speed, not bits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def one_run(preset: str, per_call: int, epochs: int, workdir: Path) -> dict:
    """metrics.json of one `python -m tf_rnn.train` run."""
    command = [sys.executable, "-m", "tf_rnn.train", "--preset", preset, "--dataset", "fashion_mnist",
               "--epochs", str(epochs), "--steps-per-execution", str(per_call), "--workdir", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"execution_steps: {' '.join(command[1:])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((workdir / "metrics.json").read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.execution_steps", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--values", type=int, nargs=2, default=[2, 10], metavar=("A", "B"))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2: the first is not steady)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1 or min(args.values) < 1:
        parser.error("need --epochs >= 2, --rounds >= 1 and values >= 1")

    from benchmarks import machine

    runs = {v: [] for v in args.values}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in args.values:
                runs[v].append(one_run(args.preset, v, args.epochs, Path(tmp) / f"{v}-{r}"))
    result = {}
    for v, metrics in runs.items():
        steady = statistics.median(s for m in metrics for s in m["epoch_seconds"][1:])
        result[v] = {"steps_per_execution_run": metrics[0]["steps_per_execution"],
                     "steady_epoch_seconds_median": round(steady, 2),
                     "samples_per_second": round(metrics[0]["train_examples"] / steady, 1),
                     "epoch_seconds": [m["epoch_seconds"] for m in metrics]}
    first, second = args.values
    fields = dict(preset=args.preset, epochs=args.epochs, rounds=args.rounds, runs={str(v): r for v, r in result.items()},
                  speedup=round(result[first]["steady_epoch_seconds_median"] /
                                result[second]["steady_epoch_seconds_median"], 3),
                  same_weights=len({m["weights_sha256"] for ms in runs.values() for m in ms}) == 1,
                  steps_per_epoch=runs[first][0]["steps"] // args.epochs)
    print(json.dumps(fields))
    if args.json:
        machine.write_result(args.json, "benchmarks.execution_steps", **fields)
    return 0


if __name__ == "__main__":
    sys.exit(main())
