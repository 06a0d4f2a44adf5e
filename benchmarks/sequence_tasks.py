"""The seed's claims as experiments over seeds: steps to a threshold per cell (adding, copy), pixel/permuted images.

Each run is an ordinary `python -m tf_rnn.train FLAGS` (its command is in the JSON) with one addition, a probe:
every `--every` optimizer steps it scores the model on the first 2,048 test sequences (adding: MSE; copy: accuracy
on the recalled symbols; images: accuracy) and, where the experiment has a threshold, stops the run once it is
met, so a run that solves the task early costs little. The probe draws no random numbers and runs the model in
inference mode: up to its stop, a run trains exactly as its command does.

    python -m benchmarks.sequence_tasks adding --seq-len 100 --seeds 0 1 2 --steps 4000 --out benchmarks/results/adding.json
    python -m benchmarks.sequence_tasks copy --seq-len 20 --seeds 0 1 2 --steps 3000 --out benchmarks/results/copy.json
    python -m benchmarks.sequence_tasks images --seeds 0 1 2 --steps 200 --out benchmarks/results/pixel_fashion_mnist.json

Runs go to `--runs` (default `runs/experiments/`), one folder each; a finished run there is reused, not retrained,
so an interrupted experiment resumes where it stopped and more seeds can be added later. The JSON names the CPU:
the same seeded run ends elsewhere on another CPU (floating-point order), which is why claims rest on several seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks import machine

CELLS = ("lstm", "gru", "simple")
PROBE_EXAMPLES = 2048
PROBE_FILE = "probe.json"
KEPT = ("test_mse", "test_mae", "baseline_mse", "test_accuracy", "test_loss", "baseline_loss", "steps", "epochs",
        "train_seconds", "test_examples", "train_examples", "global_batch_size")
# Each experiment: the probed metric, the threshold that counts as solved (None: none, run the budget) and its side.
EXPERIMENTS = {
    "adding": dict(metric="test_mse", threshold=0.01, below=True),
    "copy": dict(metric="test_accuracy", threshold=0.9, below=False),
    "images": dict(metric="test_accuracy", threshold=None, below=False),
}


# --- one run, in its own process --------------------------------------------------------------------------------


def probe_callback(model_inputs, spec, every: int, threshold: float | None, below: bool, metric: str):
    """A Keras callback scoring the model on `model_inputs` (a test `tf.data`) every `every` optimizer steps."""
    import keras

    from tf_rnn import tasks
    from tf_rnn.callbacks import optimizer_steps

    class Probe(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.curve: list[tuple[int, float]] = []
            self.reached: int | None = None

        def on_train_batch_end(self, batch, logs=None):
            # Called once per execution (several steps): the probe runs at the first call past each multiple.
            step = optimizer_steps(self.model)
            if step < (len(self.curve) + 1) * every:
                return
            value = tasks.evaluate(self.model, model_inputs, spec)[metric]
            self.curve.append((step, round(value, 6)))
            print(f"probe: step {step}: {metric} {value:.4f}", flush=True)
            if threshold is not None and (value < threshold if below else value > threshold):
                self.reached = step
                self.model.stop_training = True

    return Probe()


def probe_main(argv: list[str]) -> int:
    """`probe --every N --threshold X --metric M [--above] -- TRAIN FLAGS`: one run; writes probe.json beside it."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sequence_tasks probe")
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--above", action="store_true", help="solved when the metric exceeds the threshold")
    parser.add_argument("--metric", required=True)
    parser.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    from tf_rnn import datasets, pipeline, train

    config, workdir = train.parse_flags([f for f in args.flags if f != "--"])
    arrays, spec = datasets.load(config, datasets.get(config.dataset))
    probe_set = pipeline.pipeline(arrays.x_test[:PROBE_EXAMPLES], arrays.y_test[:PROBE_EXAMPLES], 512)
    probe = probe_callback(probe_set, spec, args.every, args.threshold, not args.above, args.metric)
    train.train_and_evaluate(config, workdir, arrays=arrays, extra_callbacks=[probe])
    (workdir / PROBE_FILE).write_text(json.dumps({"curve": probe.curve, "reached": probe.reached}) + "\n")
    return 0


def run(name: str, flags: list[str], runs: Path, every: int, experiment: dict) -> dict:
    """One probed run in a fresh process (or the finished one in RUNS/NAME): its metrics, curve and command."""
    workdir = runs / name
    if not (workdir / PROBE_FILE).exists():
        probe = ["--every", str(every), "--metric", experiment["metric"]]
        if experiment["threshold"] is not None:
            probe += ["--threshold", str(experiment["threshold"]), *([] if experiment["below"] else ["--above"])]
        command = [sys.executable, "-m", "benchmarks.sequence_tasks", "probe", *probe, "--", *flags,
                   "--workdir", str(workdir)]
        print("+", " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    metrics = json.loads((workdir / "metrics.json").read_text())
    probe = json.loads((workdir / PROBE_FILE).read_text())
    return {"command": " ".join(["python -m tf_rnn.train", *flags]), **probe,
            **{k: metrics[k] for k in KEPT if k in metrics}}


# --- the experiments --------------------------------------------------------------------------------------------


def summarize(seeds: dict[str, dict], budget: int) -> dict:
    """Per seed the step it reached the threshold at (None: not in the budget); the median, counting a miss as
    worse than any hit (so the median is a miss when most seeds missed)."""
    reached = [r["reached"] for r in seeds.values()]
    ordered = sorted(reached, key=lambda s: float("inf") if s is None else s)
    middle = ordered[(len(ordered) - 1) // 2: len(ordered) // 2 + 1]  # One element, or two for an even count.
    median = None if None in middle else statistics.mean(middle)
    return {"reached": reached, "solved": sum(s is not None for s in reached), "budget": budget,
            "median_steps": median}


def describe(summary: dict) -> str:
    if summary["median_steps"] is None:
        return f"median: not reached in {summary['budget']} steps ({summary['solved']}/{len(summary['reached'])} seeds)"
    return f"median {summary['median_steps']:.0f} steps ({summary['solved']}/{len(summary['reached'])} seeds)"


def plot(results: dict, experiment: dict, png: Path) -> None:
    """The probe's curve of every run: one panel per T (or view), one colour per cell, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({r["panel"] for r in results.values()})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), dpi=110, squeeze=False)
    colours = {}
    for ax, panel in zip(axes[0], panels):
        for r in results.values():
            if r["panel"] != panel or not r["curve"]:
                continue
            colour = colours.setdefault(r["line"], f"C{len(colours)}")
            steps, values = zip(*r["curve"])
            first = r["seed"] == min(x["seed"] for x in results.values() if x["line"] == r["line"])
            # Markers: a run stopped at its first probe is a single point, which a line alone would not show.
            ax.plot(steps, values, color=colour, alpha=0.8, marker=".", label=r["line"] if first else None)
        if experiment["threshold"] is not None:
            ax.axhline(experiment["threshold"], color="grey", linestyle="--", label="threshold")
        ax.set(title=panel, xlabel="optimizer steps", ylabel=f"{experiment['metric']} ({PROBE_EXAMPLES} test)",
               yscale="log" if experiment["metric"] == "test_mse" else "linear")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        return probe_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sequence_tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=tuple(EXPERIMENTS))
    parser.add_argument("--seq-len", type=int, nargs="+", default=[100])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--steps", type=int, required=True, help="budget of optimizer steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--every", type=int, default=100, help="probe every this many optimizer steps")
    parser.add_argument("--runs", type=Path, default=Path("runs/experiments"))
    parser.add_argument("--out", type=Path, required=True, help="result JSON (a PNG of every run's curve beside it)")
    args = parser.parse_args(argv)
    experiment = EXPERIMENTS[args.experiment]
    results = {}
    for seed in args.seeds:  # Seed-major: an experiment cut short still has every cell at its first seeds.
        common = ["--steps", str(args.steps), "--seed", str(seed)]
        if args.experiment == "images":
            for view in ("pixels", "permuted"):
                flags = ["--dataset", "fashion_mnist", "--sequence", view, "--layers", "1", "--dropout", "0",
                         "--clipnorm", "1", "--lr-schedule", "constant", *common]
                results[f"{view}_s{seed}"] = {"panel": view, "line": "lstm", "seed": seed, **run(
                    f"fashion_mnist_{view}_{args.steps}_s{seed}", flags, args.runs, args.every, experiment)}
            continue
        for seq_len in args.seq_len:
            for cell in args.cells:
                flags = ["--dataset", args.experiment, "--seq-len", str(seq_len), "--cell", cell, *common]
                name = f"{args.experiment}_T{seq_len}_{cell}_{args.steps}_s{seed}"
                results[f"T{seq_len}_{cell}_s{seed}"] = {"panel": f"T = {seq_len}", "line": cell, "seed": seed,
                                                         "seq_len": seq_len, "cell": cell,
                                                         **run(name, flags, args.runs, args.every, experiment)}
    groups: dict[str, dict] = {}
    for key, r in results.items():
        groups.setdefault(f"{r['panel']}, {r['line']}", {})[key] = r
    summary = {group: summarize(runs, args.steps) for group, runs in groups.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "experiment": args.experiment, **experiment, "budget_steps": args.steps, "probe_every": args.every,
        "probe_examples": PROBE_EXAMPLES, "seeds": args.seeds, "cpu": machine.cpu(),
        "command": " ".join(["python -m benchmarks.sequence_tasks", *argv]),
        "summary": summary, "runs": results}, indent=2, sort_keys=True) + "\n")
    plot(results, experiment, args.out.with_suffix(".png"))
    for group, s in summary.items():
        finals = [r.get("test_mse", r.get("test_accuracy")) for r in groups[group].values()]
        line = describe(s) if experiment["threshold"] is not None else ""
        print(f"{group}: {line}; final {experiment['metric']} per seed: "
              f"{', '.join(f'{v:.4f}' for v in finals)}")
    print(f"wrote {args.out} (CPU: {machine.cpu_name()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
