"""The README is run: every Python block, and every command (fenced or inline) that can run offline here, in the
README's order, with a small budget where it trains; the rest are listed with the reason they cannot run here.

A command the README gains or changes fails the fast test until it is added to PLAN below.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).parents[1] / "README.md"
SMALL = ["--steps", "2"]  # Enough to train, evaluate and export for real.

# Each README command: the flags appended to run it on a budget (argparse: the last value wins), or why not here.
PLAN = {
    "bash .ci/run": "skip: the test suite itself",
    "python -m tf_rnn.train": "skip: MNIST needs a download (no network here)",
    "python -m tf_rnn.predict": "skip: names the command; its uses follow",
    "python -m tf_rnn.tune": "skip: names the command; its uses follow",
    "python -m tf_rnn.fused info": [],
    "python -m tf_rnn.train --help": [],
    "python -m tf_rnn.train --preset seed --dataset fashion_mnist": [*SMALL, "--workdir", "runs/seed"],
    "python -m tf_rnn.train --dataset fashion_mnist": [*SMALL, "--workdir", "runs/default"],
    "python -m tf_rnn.train --dataset fashion_mnist --workdir runs/fashion": SMALL,
    "python -m legacy_port.mnist_lstm --dataset fashion_mnist --workdir runs/legacy": ["--training-iters", "256"],
    "python -m tf_rnn.export runs/fashion/model.keras --out exports/fashion/1 --format saved_model litert onnx "
    "--quantize int8": [],
    "python -m tf_rnn.predict exports/fashion/1/model.tflite shirt.png batch.npy t10k-images-idx3-ubyte.gz": [],
    "python -m tf_rnn.train --dataset adding --seq-len 100 --workdir runs/adding": SMALL,
    "python -m tf_rnn.predict runs/adding/saved_model adding.npy": [],
    "python -m tf_rnn.tune --tuner hyperband --max-trials 10 --epochs 3 --final-epochs 3 --dataset fashion_mnist "
    "--workdir runs/search": ["--max-trials", "1", "--epochs", "1", "--final-epochs", "1", "--validation-split",
                              "0.99"],
    "python -m tf_rnn.train --config runs/search/best_config.json": [*SMALL, "--workdir", "runs/best"],
    "python -m tf_rnn.convert_tf1 runs/legacy --out runs/legacy/seed.keras": [],
    "python -m tf_rnn.gpu_check --workdir /tmp/gpu_check": "skip: needs a GPU",
    "python -m benchmarks.train_throughput --repeats 5": "skip: a benchmark of minutes (tests/test_benchmarks.py "
                                                         "runs it small)",
    "python -m benchmarks.serve_latency runs/fashion": "skip: a benchmark (tests/test_benchmarks.py runs it small)",
    "python -m benchmarks.quantization runs/fashion": "skip: a benchmark (tests/test_benchmarks.py runs it small)",
}
SEVERAL_MACHINES = ("KERASTUNER_", "TF_CONFIG=", "FLAGS=")
SETUP = "apt-get update"  # The quick start's machine set-up; its training command is run below on its own.


def steps() -> list[tuple[str, str]]:
    """The README's code in order: ("python", block) and ("command", one command line)."""
    text = README.read_text()
    found = []
    for m in re.finditer(r"```(\w*)\n(.*?)```|`(python -m [^`]+)`", text, re.S):
        lang, body, inline = m.groups()
        if inline:
            found.append(("command", " ".join(inline.split())))
        elif lang == "python":
            found.append(("python", body))
        elif lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                command = " ".join(line.split("#")[0].split()) if not line.startswith("#") else ""
                if SETUP in command:  # `... && .venv/bin/python -m tf_rnn.train ARGS`: the last command of the chain.
                    command = "python -m " + command.rsplit(".venv/bin/python -m ", 1)[1]
                if command:
                    found.append(("command", command))
    return found


def plan(command: str):
    if command.startswith(SEVERAL_MACHINES):
        return "skip: several machines"
    if command.startswith("python -c "):
        return []
    return PLAN.get(command)


def test_every_readme_command_is_run_or_skipped_for_a_reason():
    commands = [c for kind, c in steps() if kind == "command"]
    assert len(commands) >= 15
    unplanned = [c for c in commands if plan(c) is None]
    assert not unplanned, f"README commands the test does not know how to run (add them to PLAN): {unplanned}"
    stale = set(PLAN) - set(commands)
    assert not stale, f"PLAN names commands the README no longer has: {stale}"


def test_the_readme_python_snippet_on_generated_data_prints_what_its_comment_says(tmp_path):
    block = next(body for kind, body in steps() if kind == "python" and "adding" in body)
    done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = [line.split("#", 1)[1].strip() for line in block.splitlines() if "print(" in line and "#" in line]
    assert expected and all(e in done.stdout for e in expected), (expected, done.stdout)


@pytest.mark.slow
def test_the_readme_runs(tmp_path, fashion_dir):
    """Every runnable command and Python block, in order, in one folder (as a reader would), on real data."""
    shutil.copy(fashion_dir / "t10k-images-idx3-ubyte.gz", tmp_path)
    from tf_rnn.datasets import load_images

    images = load_images("fashion_mnist", fashion_dir).x_test[:3]
    np.save(tmp_path / "batch.npy", images)
    import PIL.Image

    PIL.Image.fromarray(images[0]).save(tmp_path / "shirt.png")
    ran = set()
    for kind, code in steps():
        if code in ran:  # The same command quoted twice (a results table and its section) runs once.
            continue
        ran.add(code)
        if kind == "python":
            argv = [sys.executable, "-c", code]
        else:
            extra = plan(code)
            if isinstance(extra, str):
                continue
            argv = [sys.executable, *code.split()[1:], *extra] if code.startswith("python ") else code.split()
            if code.startswith("python -c "):
                argv = [sys.executable, "-c", code.split(" ", 2)[2].strip("\"'")]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=900,
                              env={**os.environ, "TF_RNN_DATA_DIR": str(fashion_dir)})
        assert done.returncode == 0, (code[:200], done.stderr[-2000:])
