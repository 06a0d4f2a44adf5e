"""The seed's claims as experiments: adding and copy problems per cell, pixel/permuted Fashion-MNIST, one JSON each.

Each experiment is a set of ordinary `python -m tf_rnn.train` runs (commands in the JSON); this script only runs
them in fresh processes, collects their `metrics.json` and, for the adding problem, draws validation MSE against
optimizer steps for every cell and T (a PNG beside the JSON, and the same image in TensorBoard).

    python -m benchmarks.sequence_tasks adding --seq-len 100 200 400 --steps 2000 --out benchmarks/results/adding.json
    python -m benchmarks.sequence_tasks copy --seq-len 100 --steps 1500 --out benchmarks/results/copy.json
    python -m benchmarks.sequence_tasks images --steps 400 --out benchmarks/results/pixel_fashion_mnist.json

Runs go to `--runs` (default `runs/experiments/`); a finished run there is reused, not retrained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CELLS = ("lstm", "gru", "simple")
KEPT = ("test_mse", "test_mae", "baseline_mse", "test_accuracy", "test_loss", "baseline_loss", "steps", "epochs",
        "best_epoch", "train_seconds", "train_samples_per_second", "history", "test_examples", "train_examples",
        "global_batch_size")


def run(name: str, flags: list[str], runs: Path) -> dict:
    """`python -m tf_rnn.train FLAGS --workdir RUNS/NAME` in a fresh process; its metrics plus the command."""
    workdir = runs / name
    command = [sys.executable, "-m", "tf_rnn.train", *flags, "--workdir", str(workdir)]
    if not (workdir / "metrics.json").exists():
        print("+", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    metrics = json.loads((workdir / "metrics.json").read_text())
    shown = ["python", *command[1:-1], f"runs/experiments/{name}"]
    return {"command": " ".join(shown), **{k: metrics[k] for k in KEPT if k in metrics}}


def epoch_end_steps(metrics: dict) -> list[int]:
    """The optimizer step at which each epoch's validation ran (the last epoch may be cut short by --steps)."""
    per_epoch = -(-metrics["train_examples"] // metrics["global_batch_size"])
    return [min(per_epoch * (i + 1), metrics["steps"]) for i in range(metrics["epochs"])]


def plot_adding(results: dict, png: Path, logdir: Path | None) -> None:
    """Validation MSE per epoch against optimizer steps, one panel per T, one line per cell, the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["seq_len"] for r in results.values()})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), dpi=110, squeeze=False)
    for ax, seq_len in zip(axes[0], lengths):
        for key, r in results.items():
            if r["seq_len"] != seq_len:
                continue
            ax.plot(epoch_end_steps(r), r["history"]["val_loss"], marker="o", label=r["cell"])
            baseline = r["baseline_mse"]
        ax.axhline(baseline, color="grey", linestyle="--", label=f"predict the mean ({baseline:.3f})")
        ax.set(title=f"adding problem, T = {seq_len}", xlabel="optimizer steps", ylabel="validation MSE", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    if logdir is not None:
        import tensorflow as tf

        with tf.summary.create_file_writer(str(logdir)).as_default():
            image = tf.image.decode_png(png.read_bytes(), channels=4)
            tf.summary.image("adding_problem", image[None], step=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sequence_tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("adding", "copy", "images"))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[100])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps per run (the same for every run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--out", type=Path, required=True, help="result JSON (a PNG beside it for adding)")
    args = parser.parse_args(argv)
    common = ["--steps", str(args.steps), "--seed", str(args.seed)]
    results = {}
    if args.experiment == "images":
        for view in ("pixels", "permuted"):
            name = f"fashion_mnist_{view}_{args.steps}"
            flags = ["--dataset", "fashion_mnist", "--sequence", view, "--layers", "1", "--dropout", "0",
                     "--clipnorm", "1", "--lr-schedule", "constant", *common]
            results[view] = {"sequence": view, **run(name, flags, args.runs)}
    else:
        for seq_len in args.seq_len:
            for cell in args.cells:
                name = f"{args.experiment}_T{seq_len}_{cell}_{args.steps}"
                flags = ["--dataset", args.experiment, "--seq-len", str(seq_len), "--cell", cell, *common]
                results[f"T{seq_len}_{cell}"] = {"seq_len": seq_len, "cell": cell, **run(name, flags, args.runs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"experiment": args.experiment, "steps": args.steps, "runs": results},
                                   indent=2, sort_keys=True) + "\n")
    if args.experiment == "adding":
        plot_adding(results, args.out.with_suffix(".png"), args.runs / "tensorboard_adding")
    for key, r in results.items():
        score = (f"test MSE {r['test_mse']:.4f} (baseline {r['baseline_mse']:.4f})" if "test_mse" in r
                 else f"test accuracy {r['test_accuracy']:.4f}, loss {r['test_loss']:.4f}")
        print(f"{key}: {score}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
