"""Paired A/B of two versions of the fused kernel's source: both loaded into one process, timed alternately.

    python -m benchmarks.kernel_ab OLD NEW [--cell lstm|gru] [--rounds 30] [--threads 2] [--json OUT]
    python -m benchmarks.kernel_ab OLD NEW --training [--cell lstm|gru] [--rounds 5] [--steps 150] [--json OUT]

OLD and NEW are git revisions (their `tf_rnn/kernels/rnn_sequence.cc`) or paths to a `.cc` file. Each is compiled
with `tf_rnn.fused`'s own command line, its ops renamed (`TfRnn...` → `TfRnnOld...` / `TfRnnNew...`) so that both
libraries load side by side. Each round times 5 forward and 5 backward calls of one, then of the other, on the seed's
shapes (batch 128, 28 steps of 28, 128 units); reported: the medians over rounds of new/old time per op and for the
pair (< 1: NEW is faster).

Why not two processes: on a shared machine, runs minutes apart differ by ±15%, more than most kernel changes are
worth. Alternating within one process, both versions meet the same neighbours; a source against itself reads
1.00 within a few percent (`results/kernel_ab.json` has that run beside the others).

`--training`: the ops alone do not show what happens to them inside a training step, where other ops and the input
pipeline's threads share the cores (a change of the forward's row blocks read 1.00 here and 1.1× in training). Then
each source is compiled as it is (names unchanged) and each round runs one `benchmarks.train_throughput` worker
(`tf_rnn`, the seed model, real Fashion-MNIST) with OLD's library, then one with NEW's; reported: samples/s of every
round and the median over rounds of new/old samples/s (> 1: NEW trains faster).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "tf_rnn/kernels/rnn_sequence.cc"
BATCH, TIME, FEATURES, UNITS = 128, 28, 28, 128


def source_text(which: str) -> str:
    """The kernel source at a git revision, or in a file."""
    if Path(which).is_file():
        return Path(which).read_text()
    done = subprocess.run(["git", "show", f"{which}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kernel_ab: {which!r} is neither a file nor a git revision with {SOURCE} "
                         f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'git failed'})")
    return done.stdout


def renamed(source: str, tag: str) -> str:
    """The source with every registered op `TfRnnX` renamed `TfRnn<tag>X` (Python: `tf_rnn_<tag>_x`)."""
    out, count = re.subn(r'"TfRnn(\w+)"', rf'"TfRnn{tag}\1"', source)
    if not count:
        raise SystemExit("kernel_ab: no TfRnn... op names found in the source")
    return out


def compile_source(source: str, tag: str, workdir: Path, defines: tuple[str, ...] = (), rename: bool = True) -> Path:
    """Compiles the source, its ops renamed with `tag` unless `rename` is false (with `defines`, e.g. the tests'
    TF_RNN_EMULATE_AVX512): the library's path."""
    from tf_rnn import fused

    cc, so = workdir / f"{tag}.cc", workdir / f"{tag}.so"
    cc.write_text(renamed(source, tag) if rename else source)
    cxx, _ = fused.compiler()
    done = subprocess.run(fused.build_command(cxx, so, source=cc, defines=defines), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"kernel_ab: the {tag.lower()} source does not compile: {fused.first_error(done)}")
    return so


def build(source: str, tag: str, workdir: Path, defines: tuple[str, ...] = ()):
    """Compiles the renamed source and loads it: the op module."""
    import tensorflow as tf

    return tf.load_op_library(str(compile_source(source, tag, workdir, defines)))


def measure_training(old_so: Path, new_so: Path, cell: str, rounds: int, steps: int) -> dict:
    """Training throughput of the seed model with each library, alternating, one fresh process per run."""
    from benchmarks import train_throughput

    rows = []
    for i in range(rounds):
        rates = {}
        for tag, so in (("old", old_so), ("new", new_so)):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", train_throughput.KERNEL_LIBRARY_ENV: str(so)}
            done = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--worker", "tf_rnn",
                                   "--steps", str(steps), "--cell", cell], capture_output=True, text=True, env=env,
                                  cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"kernel_ab: training with the {tag} kernel failed: "
                                 f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
            rates[tag] = round(json.loads(done.stdout.strip().splitlines()[-1])["rate"], 1)
        print(f"  round {i + 1}: old {rates['old']:,.0f}, new {rates['new']:,.0f} samples/s", file=sys.stderr)
        rows.append(rates)
    median = statistics.median
    return {
        "samples_per_s": rows,
        "new_over_old_samples_per_s": round(median(r["new"] / r["old"] for r in rows), 3),
        "old_median": round(median(r["old"] for r in rows)),
        "new_median": round(median(r["new"] for r in rows)),
    }


def measure(old_ops, new_ops, cell: str, rounds: int) -> dict:
    import numpy as np
    import tensorflow as tf

    gates = {"lstm": 4, "gru": 3}[cell]
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, TIME, FEATURES)).astype(np.float32))
    w = tf.constant(rng.normal(0, 0.1, size=(FEATURES, gates * UNITS)).astype(np.float32))
    u = tf.constant(rng.normal(0, 0.1, size=(UNITS, gates * UNITS)).astype(np.float32))
    b = tf.zeros([gates * UNITS] if cell == "lstm" else [2, gates * UNITS])
    dh = tf.constant(rng.normal(size=(BATCH, TIME, UNITS)).astype(np.float32))

    def calls(ops, tag):
        forward = tf.function(lambda: getattr(ops, f"tf_rnn_{tag}_{cell}_forward")(x, w, u, b))
        saved = forward()
        backward = tf.function(lambda: getattr(ops, f"tf_rnn_{tag}_{cell}_backward")(dh, x, u, *saved))
        return forward, backward

    def ms(fn, n=5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n * 1e3

    old, new = calls(old_ops, "old"), calls(new_ops, "new")
    for fn in (*old, *new):  # Warm-up: first calls trace and allocate.
        ms(fn)
    rows = []
    for _ in range(rounds):
        o = [ms(fn) for fn in old]
        n = [ms(fn) for fn in new]
        rows.append((o, n))
    median = statistics.median
    return {
        "new_over_old": {
            "forward": round(median(n[0] / o[0] for o, n in rows), 3),
            "backward": round(median(n[1] / o[1] for o, n in rows), 3),
            "pair": round(median(sum(n) / sum(o) for o, n in rows), 3),
        },
        "old_pair_ms_median": round(median(sum(o) for o, _ in rows), 2),
        "new_pair_ms_median": round(median(sum(n) for _, n in rows), 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.kernel_ab", description=__doc__.split("\n")[0])
    parser.add_argument("old", help="git revision or .cc file")
    parser.add_argument("new", help="git revision or .cc file")
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--rounds", type=int, help="rounds of alternation (default 30, with --training 5)")
    parser.add_argument("--threads", type=int, default=2,
                        help="TensorFlow intra-op threads for the ops alone (default 2; --training: TensorFlow's own)")
    parser.add_argument("--training", action="store_true",
                        help="time training steps of the seed model with each kernel instead of the ops alone")
    parser.add_argument("--steps", type=int, default=150, help="with --training: timed steps per run (default 150)")
    parser.add_argument("--json", help="append the result to this JSON list file")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 5 if args.training else 30
    for name in ("rounds", "threads", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be at least 1")
    old_src, new_src = source_text(args.old), source_text(args.new)  # Before TensorFlow: bad input fails fast.
    if args.training:
        from benchmarks import machine
        from tf_rnn import fused

        with tempfile.TemporaryDirectory() as tmp:
            old_so, new_so = (compile_source(src, tag, Path(tmp), rename=False)
                              for src, tag in ((old_src, "Old"), (new_src, "New")))
            result = {"old": args.old, "new": args.new, "cell": args.cell, "mode": "training", "rounds": args.rounds,
                      "steps": args.steps, "cpu": machine.cpu_name(), "isa": os.environ.get(fused.ISA_ENV) or "auto",
                      **measure_training(old_so, new_so, args.cell, args.rounds, args.steps)}
        return report(result, args.json)

    import tensorflow as tf

    from benchmarks import machine
    from tf_rnn import fused

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        old_ops, new_ops = build(old_src, "Old", Path(tmp)), build(new_src, "New", Path(tmp))
        result = {"old": args.old, "new": args.new, "cell": args.cell, "threads": args.threads,
                  "rounds": args.rounds, "cpu": machine.cpu_name(),
                  "isa": os.environ.get(fused.ISA_ENV) or "auto",
                  **measure(old_ops, new_ops, args.cell, args.rounds)}
    return report(result, args.json)


def report(result: dict, json_path: str | None) -> int:
    """Prints the result and appends it to the JSON list file, if one is named."""
    print(json.dumps(result))
    if json_path:
        path = Path(json_path)
        runs = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*runs, result], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
