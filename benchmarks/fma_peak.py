"""This CPU's float32 FMA ceiling with 1, 2, ... threads at once: the most any product in the fused kernel can reach.

    python -m benchmarks.fma_peak [--threads 1 2] [--repeats 5] [--json OUT]

Each thread runs a loop of independent 8-wide fused multiply-adds on values held in registers: no memory traffic,
no dependency stalls (10 chains cover the FMA units' latency), nothing to wait for. Compiled with `tf_rnn.fused`'s
compiler (`$CXX`) for AVX2+FMA. Reported: GFLOP/s for each thread count (median over repeats, thread counts
alternating so a noisy neighbour hurts them alike) and each count's scaling over one thread.

Why: on this VM, two threads of the fused ops (and of TensorFlow's own matmul) run only ~1.3-1.6× one thread. This
says how much of that is the machine: two vCPUs that are one host core's two hyperthreads share its FMA units,
whatever `lscpu` inside the VM reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

PROGRAM = r"""
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
static float sink[8 * 256];
static void work(int id, long iters) {
  __m256 a[10];
  for (int i = 0; i < 10; ++i) a[i] = _mm256_set1_ps(1.0f + i * 1e-7f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (long n = 0; n < iters; ++n)
    for (int i = 0; i < 10; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  __m256 s = a[0];
  for (int i = 1; i < 10; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_storeu_ps(sink + 8 * (id % 256), s);  // Used, so the loop is not optimised away.
}
int main(int argc, char** argv) {
  const int threads = atoi(argv[1]);
  const long iters = atol(argv[2]);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> pool;
  for (int i = 0; i < threads; ++i) pool.emplace_back(work, i, iters);
  for (auto& t : pool) t.join();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  printf("%.3f\n", threads * iters * 10.0 * 16 / s / 1e9);  // 10 FMAs of 8 floats, 2 FLOP each, per iteration.
}
"""


def compile_program(workdir: Path) -> Path:
    from tf_rnn import fused

    flags = fused.cpu_flags()
    if flags is not None and not {"avx2", "fma"} <= flags:
        raise SystemExit("fma_peak: this CPU has no AVX2+FMA, the instructions the fused kernel's products use")
    try:
        cxx, _ = fused.compiler()
    except fused.BuildError as e:
        raise SystemExit(f"fma_peak: {e}") from None
    src, exe = workdir / "fma_peak.cc", workdir / "fma_peak"
    src.write_text(PROGRAM)
    done = subprocess.run([cxx, "-O3", "-mavx2", "-mfma", "-pthread", str(src), "-o", str(exe)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fma_peak: the test program does not compile: {fused.first_error(done)}")
    return exe


def measure(exe: Path, threads: list[int], repeats: int, iters: int) -> dict:
    runs = {n: [] for n in threads}
    for _ in range(repeats):
        for n in threads:
            out = subprocess.run([str(exe), str(n), str(iters)], capture_output=True, text=True, check=True)
            runs[n].append(float(out.stdout))
    gflops = {str(n): round(statistics.median(v), 1) for n, v in runs.items()}
    one = gflops.get("1")
    return {
        "gflops": gflops,
        "gflops_repeats": {str(n): v for n, v in runs.items()},
        "scaling_over_one_thread": {n: round(g / one, 2) for n, g in gflops.items()} if one else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fma_peak", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=100_000_000, help="loop iterations per thread (160 FLOP each)")
    parser.add_argument("--json", help="write the result to this file")
    args = parser.parse_args(argv)
    for name, values in (("threads", args.threads), ("repeats", [args.repeats]), ("iters", [args.iters])):
        if min(values) < 1:
            parser.error(f"--{name} {min(values)}: must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        result = {"command": " ".join(["python -m benchmarks.fma_peak", *(argv or [])]),
                  "threads": args.threads, "repeats": args.repeats, "iters": args.iters,
                  **measure(compile_program(Path(tmp)), args.threads, args.repeats, args.iters)}
    print(json.dumps({k: result[k] for k in ("gflops", "scaling_over_one_thread")}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
