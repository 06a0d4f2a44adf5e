"""Wall time of one small search run by a chief and 1, 2, ... workers on this machine (localhost, a free port).

    python -m benchmarks.tune_workers --workers 1 2 --out benchmarks/results/tune_workers.json

Every process is `python -m tf_rnn.tune` with the same flags (below) and keras-tuner's KERASTUNER_* variables; the
time is from starting the processes to the chief's exit (search, then the best configuration's retrain, test and
export). On one machine the workers share its cores: the speed-up measured here is a lower bound of what workers on
separate machines give.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEARCH = ["--tuner", "random", "--max-trials", "4", "--epochs", "1", "--final-epochs", "1",
          "--validation-split", "0.5", "--dataset", "fashion_mnist"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search(workers: int, root: Path) -> dict:
    """Runs the search with a chief and `workers` workers; returns its wall time and who ran which trial."""
    port, workdir = free_port(), root / f"workers{workers}"
    argv = [sys.executable, "-m", "tf_rnn.tune", *SEARCH, "--workdir", str(workdir)]
    logs, processes = {}, {}
    start = time.perf_counter()
    for tuner_id in ["chief", *[f"worker{i}" for i in range(workers)]]:
        env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(port)}
        logs[tuner_id] = root / f"workers{workers}-{tuner_id}.log"
        processes[tuner_id] = subprocess.Popen(argv, env=env, stdout=logs[tuner_id].open("w"),
                                               stderr=subprocess.STDOUT)
    codes = {name: p.wait() for name, p in processes.items()}
    seconds = time.perf_counter() - start
    if any(codes.values()):
        raise SystemExit(f"a process failed: {codes}; logs in {root}")
    ran = {name: [line.split("trial ")[1].split()[0] for line in logs[name].read_text().splitlines()
                  if line.startswith(f"tuner {name}: trial ")] for name in processes if name != "chief"}
    return {"workers": workers, "wall_seconds": round(seconds, 1), "trials_by_worker": ran}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tune_workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="tune_workers-"))
    runs = [search(n, root) for n in args.workers]
    base = runs[0]["wall_seconds"]
    for run in runs:
        run["speedup_vs_first"] = round(base / run["wall_seconds"], 2)
        print(f"{run['workers']} worker(s): {run['wall_seconds']:.0f} s ({run['speedup_vs_first']:.2f}x); "
              f"trials {run['trials_by_worker']}")
    result = {"command": "python -m benchmarks.tune_workers " + " ".join(sys.argv[1:] if argv is None else argv),
              "search_flags": " ".join(SEARCH), "cpus": os.cpu_count(), "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
