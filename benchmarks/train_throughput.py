"""Training throughput of the seed's model (1×LSTM(128), batch 128, Adam 1e-3, 28 steps) on real Fashion-MNIST.

    python -m benchmarks.train_throughput [--cell lstm|gru] [--only NAME] [--repeats 3] [--steps 150]
                                          [--json OUT] [--report OUT]

Contenders, each measured in its own fresh process (TensorFlow's and PyTorch's thread pools never share one),
alternating round-robin so that a noisy neighbour hurts all of them alike (`--cell gru`: the same with GRU(128)):

- `tf_rnn`       — `tf_rnn.models.build_model(seed preset)` trained by `fit` on `tf_rnn.pipeline.training_stream`
                   with the steps per execution `python -m tf_rnn.train` uses (10 for the seed preset),
                   its recurrent layer through `tf_rnn.fused` (the default on a CPU);
- `tf_rnn_1step` — the same with one step per execution (`--steps-per-execution 1`): what the kernel gives alone;
- `tf_rnn_avx2`  — `tf_rnn` with `TF_RNN_KERNEL_ISA=avx2`: the AVX2 products on an AVX-512 CPU, for the A/B of the
                   kernel's two paths (skipped on a CPU without avx512f, where `tf_rnn` runs them already);
- `tf_rnn_bf16`  — `tf_rnn` with `--precision bfloat16`: the LSTM's products on AMX tiles (skipped without them);
- `tf_rnn_keras` — `tf_rnn` with `TF_RNN_FUSED=0`: Keras' own layer inside tf_rnn's model and pipeline;
- `keras_stock`  — a stock `keras.layers.LSTM(128)` (or `GRU`) + `Dense(10)` model, `fit` on NumPy arrays;
- `legacy_port`  — the TF1 graph of `legacy_port.mnist_lstm` (`static_rnn`, `Session.run`; LSTM only);
- `pytorch`      — `torch.nn.LSTM` (or `nn.GRU`) + `Linear`, a plain training loop (skipped when torch is not
                   installed: `pip install -e ".[bench]"`);
- `pytorch_bf16` — the same under `torch.autocast("cpu", torch.bfloat16)`: PyTorch's own mixed precision (oneDNN's
                   bfloat16 LSTM, on AMX tiles where the CPU has them), beside `tf_rnn_bf16`.

Reported: steady-state samples/s (after `--warmup` steps), median over `--repeats`, the ratio to PyTorch, peak
RSS of each process, and achieved GFLOP/s against a float32 matmul peak measured in the same run (and once, bfloat16's:
whether the CPU gives bf16 products the speed an AMX path would need).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from benchmarks import machine

BATCH = 128
# benchmarks.kernel_ab --training: the `tf_rnn` worker trains with this compiled library instead of the cache's.
KERNEL_LIBRARY_ENV = "TF_RNN_BENCH_KERNEL_LIBRARY"
CONTENDERS = ("tf_rnn", "tf_rnn_1step", "tf_rnn_avx2", "tf_rnn_bf16", "tf_rnn_keras", "keras_stock", "legacy_port",
              "pytorch", "pytorch_bf16")
GATES = {"lstm": 4, "gru": 3}


def flop_per_sample(cell: str) -> int:
    """Forward: 28 steps × 2·(28 + 128)·(gates·128) FLOP; backward ≈ 2× forward. LSTM: 13.4 MFLOP per sample."""
    return 3 * 28 * 2 * (28 + 128) * GATES[cell] * 128


def _data():
    from tf_rnn import datasets
    from tf_rnn.config import resolve

    arrays, _ = datasets.load(resolve("seed", overrides={"dataset": "fashion_mnist"}))
    return arrays.x_train, arrays.y_train


def _timed(step, warmup: int, steps: int) -> float:
    """Runs `step(i)` warmup + steps times; samples/s over the last `steps`."""
    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    return steps * BATCH / (time.perf_counter() - start)


def seed_model(x, y, cell: str, one_step: bool = False, precision: str = "float32"):
    """tf_rnn's seed model as `python -m tf_rnn.train` trains it → (model, endless training stream, steps per
    execution): the steps per execution it fits to the seed preset's epoch (the 55,000 images left after
    validation), or 1 with `one_step`. Also `benchmarks.step_profile`'s model."""
    from tf_rnn import pipeline, train
    from tf_rnn.config import resolve
    from tf_rnn.models import build_model

    config = resolve("seed", overrides={"cell": cell, "precision": precision,
                                        **({"steps_per_execution": 1} if one_step else {})})
    (x_train, _), _ = pipeline.split_validation(x, y, config.validation_split, config.seed)
    per_call = train.execution_steps(config.steps_per_execution, math.ceil(len(x_train) / BATCH))
    model = build_model(config, steps_per_execution=per_call)
    return model, pipeline.training_stream(x, y, BATCH, seed=0), per_call


def run_tf_rnn(warmup, steps, cell, keras_stock=False, one_step=False, precision="float32"):
    import keras

    x, y = _data()
    if keras_stock:
        layer = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cell](128)
        model = keras.Sequential([keras.Input((28, 28)), layer, keras.layers.Dense(10)])
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        fit = dict(x=x.astype("float32") / 255, y=y, batch_size=BATCH)
    else:
        model, stream, per_call = seed_model(x, y, cell, one_step, precision)
        # The epoch here only has to outlast the measurement and be a whole number of executions.
        fit = dict(x=stream, steps_per_epoch=len(x) // BATCH // per_call * per_call)

    class Clock(keras.callbacks.Callback):
        """Times whole executions, from the first that ends at or after `warmup` optimizer steps to the first that
        ends at or after `warmup + steps` (with one step per execution: exactly those steps)."""

        def on_train_batch_end(self, batch, logs=None):
            done, now = int(self.model.optimizer.iterations.numpy()), time.perf_counter()  # Steps really run.
            if not hasattr(self, "start") and done >= warmup:
                self.start, self.first = now, done
            elif hasattr(self, "start") and done >= warmup + steps:
                self.rate = (done - self.first) * BATCH / (now - self.start)
                self.model.stop_training = True

    clock = Clock()
    model.fit(epochs=1, callbacks=[clock], verbose=0, **fit)
    return clock.rate


def run_legacy(warmup, steps):
    import numpy as np
    import tensorflow as tf

    from legacy_port import mnist_lstm

    x, y = _data()
    images, labels = x.astype(np.float32) / 255, np.eye(10, dtype=np.float32)[y]
    with tf.Graph().as_default():
        g = mnist_lstm.build_graph()
        with tf.compat.v1.Session() as sess:
            sess.run(g.init)

            def step(i):
                s = slice((i * BATCH) % (len(x) - BATCH), (i * BATCH) % (len(x) - BATCH) + BATCH)
                sess.run(g.optimizer, {g.x: images[s], g.y: labels[s]})

            return _timed(step, warmup, steps)


def run_pytorch(warmup, steps, cell, bf16=False):
    import numpy as np
    import torch

    x, y = _data()
    images, labels = torch.from_numpy(x.astype(np.float32) / 255), torch.from_numpy(y)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
            self.rnn, self.out = rnn(28, 128, batch_first=True), torch.nn.Linear(128, 10)

        def forward(self, images):
            return self.out(self.rnn(images)[0][:, -1])

    net = Net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(i):
        s = slice((i * BATCH) % (len(x) - BATCH), (i * BATCH) % (len(x) - BATCH) + BATCH)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(images[s]), labels[s])
        loss.backward()
        opt.step()

    return _timed(step, warmup, steps)


def matmul_peak_gflops(dtype: str = "float32") -> float:
    """Matmul peak of this machine now, through TensorFlow (the library the LSTMs run on).

    `bfloat16`: what issue 26's `--precision bfloat16` could reach. Where oneDNN has AMX tiles it is several times
    float32's; without them (or with the flags hidden from a VM) TensorFlow emulates it, slower than float32.
    """
    import tensorflow as tf

    a = tf.cast(tf.random.normal([2048, 2048]), dtype)
    tf.linalg.matmul(a, a).numpy()
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        tf.linalg.matmul(a, a).numpy()
        best = max(best, 2 * 2048**3 / (time.perf_counter() - start) / 1e9)
    return best


def worker(name: str, warmup: int, steps: int, cell: str) -> None:
    """Runs one measurement in this process and prints it as JSON on the last line."""
    import resource

    products = None  # For tf_rnn's rows: which of the kernel's micro-kernels ran (fused.info's "products").
    if name in ("pytorch", "pytorch_bf16"):
        rate = run_pytorch(warmup, steps, cell, bf16=name == "pytorch_bf16")
    elif name == "legacy_port":
        rate = run_legacy(warmup, steps)
    elif name in ("peak", "peak_bfloat16"):
        rate = matmul_peak_gflops("bfloat16" if name == "peak_bfloat16" else "float32")
    else:
        if name in ("tf_rnn", "tf_rnn_1step", "tf_rnn_avx2", "tf_rnn_bf16"):
            import tensorflow as tf

            from tf_rnn import fused

            library = os.environ.get(KERNEL_LIBRARY_ENV)
            if library:  # Loaded as fused.kernels() would load the cache's file; a bad one must not train the cache's.
                try:
                    fused._module, fused._tried = tf.load_op_library(library), True
                except Exception as e:  # noqa: BLE001 - any failure: say which file and stop.
                    raise SystemExit(f"{KERNEL_LIBRARY_ENV}={library} does not load as a kernel library: "
                                     f"{str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")

            if not fused.available():  # Else this row would silently measure Keras' layer under tf_rnn's name.
                raise SystemExit("tf_rnn.fused is unavailable here (the warning above says why)")
            if name == "tf_rnn_avx2" and "avx512f" not in (fused.cpu_flags() or ()):
                raise SystemExit("the CPU lacks avx512f: tf_rnn runs the AVX2 products already")
            if name == "tf_rnn_bf16" and (cell != "lstm" or not fused.amx_available()):
                raise SystemExit(fused.amx_problem() or "--precision bfloat16 is for the LSTM")
            # Which micro-kernel this row timed. A kernel from before issue 26 (kernel_ab --training against an old
            # revision) has no info op and one path: AVX2.
            isa_op = getattr(fused.kernels(), "tf_rnn_kernel_isa", None)
            products = isa_op().numpy().decode() if isa_op else "avx2 (a kernel without the info op)"
        rate = run_tf_rnn(warmup, steps, cell, keras_stock=name == "keras_stock", one_step=name == "tf_rnn_1step",
                          precision="bfloat16" if name == "tf_rnn_bf16" else "float32")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "rate": rate, "rss_mb": rss_mb, "products": products}))


def measure(name: str, warmup: int, steps: int, cell: str = "lstm") -> dict | None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_RNN_FUSED": "0" if name == "tf_rnn_keras" else "1"}
    if name == "tf_rnn_avx2":
        env["TF_RNN_KERNEL_ISA"] = "avx2"
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--worker", name,
                          "--warmup", str(warmup), "--steps", str(steps), "--cell", cell], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  {name}: skipped ({reason})", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--cell", choices=sorted(GATES), default="lstm", help="the recurrent layer (default lstm)")
    parser.add_argument("--only", choices=CONTENDERS, action="append", help="measure only these (repeatable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--json", help="write {name: samples_per_s} here")
    parser.add_argument("--report", help="write everything printed (repeats, medians, ratios, peak, RSS, versions) "
                                         "as JSON here: the file the README's table is quoted from")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.warmup, args.steps, args.cell)
        return 0
    names = args.only or list(CONTENDERS)
    if args.cell != "lstm" and "legacy_port" in names:
        names.remove("legacy_port")  # The TF1 port is the seed's LSTM program.
        print("  legacy_port: skipped (the TF1 port has an LSTM only)", file=sys.stderr)
    flop = flop_per_sample(args.cell)
    results: dict[str, list] = {n: [] for n in names}
    peaks = []
    for r in range(args.repeats):
        for name in names:  # Round-robin: the machine's mood drifts; each contender gets every part of it.
            m = measure(name, args.warmup, args.steps, args.cell)
            if m:
                results[name].append(m)
                print(f"  repeat {r + 1}: {name:12s} {m['rate']:8.0f} samples/s", file=sys.stderr)
        peaks.append(measure("peak", 0, 0)["rate"])
    peak = statistics.median(peaks)
    peak_bf16 = measure("peak_bfloat16", 0, 0)["rate"]  # Once: a property of the CPU, not a contender.
    medians = {n: statistics.median(m["rate"] for m in ms) for n, ms in results.items() if ms}
    reference = medians.get("pytorch")
    print(f"\nmatmul peak (float32, 2048², TensorFlow): {peak:.0f} GFLOP/s; GEMM bound for this model: "
          f"{peak * 1e9 / flop:,.0f} samples/s ({args.cell})")
    print(f"matmul bfloat16 (2048², TensorFlow): {peak_bf16:.0f} GFLOP/s, {peak_bf16 / peak:.2f}× float32 "
          f"(AMX tiles {'visible' if 'amx_bf16' in machine.cpu()['flags'] else 'not visible'} in /proc/cpuinfo)")
    print(f"{'contender':12s} {'samples/s':>10s} {'vs pytorch':>10s} {'GFLOP/s':>8s} {'of peak':>8s} {'peak RSS':>9s}")
    for name, rate in medians.items():
        ratio = f"{rate / reference:.2f}x" if reference else "n/a"
        gflops = rate * flop / 1e9
        rss = max(m["rss_mb"] for m in results[name])
        print(f"{name:12s} {rate:10,.0f} {ratio:>10s} {gflops:8.1f} {gflops / peak:8.1%} {rss:7.0f}MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({n: round(v, 1) for n, v in medians.items()}, f, indent=2)
    if args.report:
        write_report(args, results, medians, peaks, flop, peak_bf16)
    return 0


def write_report(args, results, medians, peaks, flop, peak_bf16) -> None:
    import platform
    from importlib import metadata

    peak = statistics.median(peaks)
    reference = medians.get("pytorch")

    def version(dist):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    report = {
        "command": "python -m benchmarks.train_throughput " + " ".join(sys.argv[1:]),
        "cpu": machine.cpu(),  # Model and vector flags as data, as machine.write_result records them.
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "cpu": machine.cpu_name()},
        "versions": {d: version(d) for d in ("tensorflow-cpu", "tensorflow", "keras", "torch")},
        "cell": args.cell, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "matmul_peak_gflops": {"median": round(peak, 1), "repeats": [round(p, 1) for p in peaks]},
        "gemm_bound_samples_per_s": round(peak * 1e9 / flop),
        "matmul_bfloat16_gflops": round(peak_bf16, 1),
        "contenders": {
            name: {
                "samples_per_s_median": round(rate, 1),
                "samples_per_s_repeats": [round(m["rate"], 1) for m in results[name]],
                "vs_pytorch": round(rate / reference, 3) if reference else None,
                "gflops": round(rate * flop / 1e9, 1),
                "of_matmul_peak": round(rate * flop / 1e9 / peak, 3),
                "peak_rss_mb": round(max(m["rss_mb"] for m in results[name])),
                "products": results[name][0].get("products"),
            }
            for name, rate in medians.items()
        },
    }
    with open(args.report, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
