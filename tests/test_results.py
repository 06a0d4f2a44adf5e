"""The figures the READMEs quote are the committed result files' figures, and every result file is accounted for.

The guide's rule — every figure from a file under `benchmarks/results/`, named beside it, with the CPU it ran on —
checked where it can drift: a result file re-run (or renamed) without its README, or a README edited alone.
"""

import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "benchmarks" / "results"
READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", ROOT / "tf_rnn" / "kernels" / "README.md"]
# Files of a run's workdir, which the READMEs name too: not result files.
RUN_FILES = {"metrics.json", "best_config.json", "config.json", "data_spec.json"}


def _table(text: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `header`, as lists of cell texts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _number(cell: str) -> tuple[float, int]:
    """The first number in a cell (`**0.9026**`, `478 s`, `1.43×`, `10,170 images/s`) and its decimals."""
    text = re.search(r"\d[\d,]*(?:\.\d+)?", cell).group().replace(",", "")
    return float(text), len(text.partition(".")[2])


def _shown(cell: str, value: float, scale: float = 1.0) -> None:
    """The README's figure is `value × scale` rounded to the decimals the README prints."""
    shown, decimals = _number(cell)
    assert shown == round(value * scale, decimals), f"README shows {cell!r}, the file has {value}"


def _load(name: str):
    return json.loads((RESULTS / name).read_text())


def _cpu(record: dict) -> dict:
    """The CPU a result file names: `cpu` at the top (benchmarks.machine.write_result) or in `machine`."""
    cpu = record.get("cpu") or record.get("machine", {}).get("cpu")
    assert cpu, "the result file does not name its CPU"
    return cpu if isinstance(cpu, dict) else {"model": cpu, "flags": re.findall(r"avx\w*|fma|amx\w*", cpu)}


def _command(text: str) -> tuple[str, set]:
    """`python -m MODULE --flag value ...` → (MODULE, {"--flag value", ...}), the workdir and any note aside."""
    flags = set(re.findall(r"--[\w-]+ [\w.]+", text.partition(" (")[0]))
    return re.search(r"-m ([\w.]+)", text).group(1), {f for f in flags if not f.startswith("--workdir")}


def _cpu_cell_matches(cell: str, cpu: dict) -> None:
    """`AMD EPYC, AVX2` names the file's CPU model and its widest vector extension, `+ AMX` where it has AMX tiles for
    bfloat16 (what --precision bfloat16 needs)."""
    model, _, isa = cell.partition(",")
    assert model.strip() in cpu["model"], (cell, cpu)
    widest = "AVX-512" if "avx512f" in cpu["flags"] else "AVX2" if "avx2" in cpu["flags"] else "none"
    widest += " + AMX" if {"amx_tile", "amx_bf16"} <= set(cpu["flags"]) else ""
    assert isa.strip() == widest, (cell, cpu)


def test_every_result_file_a_readme_names_exists_and_every_committed_one_says_how_it_was_written():
    named = set()
    for readme in READMES:
        for token in re.findall(r"`(?:benchmarks/)?(?:results/)?([\w.-]+\.(?:json|png|md))`", readme.read_text()):
            if token not in RUN_FILES and not token.endswith(".md"):
                named.add(token)
    committed = {p.name for p in RESULTS.iterdir()}
    assert named - committed == set(), "named in a README, not in benchmarks/results/"
    described = (ROOT / "benchmarks" / "README.md").read_text()
    # A plot is described beside its data (`adding.json`, `adding.png` or `..._steps.json`, `.png`).
    undescribed = [name for name in committed if name not in described and Path(name).stem + ".json" not in described]
    assert undescribed == [], "add how each was written to benchmarks/README.md's table"


def test_every_result_file_the_readme_quotes_names_its_cpu():
    quoted = re.findall(r"`(?:benchmarks/results/)?([\w-]+\.json)`", (ROOT / "README.md").read_text())
    quoted = [name for name in quoted if name not in RUN_FILES]
    assert len(quoted) >= 8
    for name in quoted:
        assert _cpu(_load(name))["model"], name


def test_the_results_table_is_its_files_test_accuracy_and_train_time():
    text = (ROOT / "README.md").read_text()
    intro = text[text.index("## Results"):text.index("| command | model | test accuracy |")]
    rows = _table(text, "| command | model | test accuracy |")
    assert len(rows) == 3
    for command, _, accuracy, seconds, file in rows:
        record = _load(file.strip("`"))
        _shown(accuracy, record["test_accuracy"])
        _shown(seconds, record["train_seconds"])
        # The row's command wrote the file: the same module and flags (in any order; the workdir aside).
        module, flags = _command(command.strip("`"))
        assert (module, flags) == _command(record["command"]), (command, record["command"])
        assert _cpu(record)["model"] in intro, (file, "the CPU above the table is not the file's")


def test_the_performance_table_is_its_files_ratios_on_the_cpu_it_names():
    rows = _table((ROOT / "README.md").read_text(), "| model | tf_rnn vs PyTorch")
    # Both cells, on each CPU the rows name; and the LSTM in bfloat16 against PyTorch's own bfloat16.
    assert {row[0] for row in rows} == {"LSTM(128)", "GRU(128)", "LSTM(128), `--precision bfloat16`"}
    for model, vs_pytorch, vs_keras, cpu, file in rows:
        record = _load(file.strip("`"))
        medians = {name: c["samples_per_s_median"] for name, c in record["contenders"].items()}
        assert record["cell"] == model.partition("(")[0].lower(), file
        if "bfloat16" in model:  # Keras' layer has no bfloat16 products to compare: no figure.
            assert "bfloat16 autocast" in vs_pytorch and vs_keras == "—"
            _shown(vs_pytorch, medians["tf_rnn_bf16"] / medians["pytorch_bf16"])
        else:
            _shown(vs_pytorch, medians["tf_rnn"] / medians["pytorch"])
            _shown(vs_keras, medians["tf_rnn"] / medians["tf_rnn_keras"])
        _cpu_cell_matches(cpu, _cpu(record))
        # A median of the repeats the file holds, not one repeat.
        for contender in record["contenders"].values():
            assert len(contender["samples_per_s_repeats"]) == record["repeats"] >= 3
            assert contender["samples_per_s_median"] == statistics.median(contender["samples_per_s_repeats"])


RUNTIMES = {"SavedModel": ("SavedModel (TensorFlow)", "Keras (float32)"), "ONNX": ("ONNX Runtime", "model.onnx"),
            "LiteRT 2.3, float32": ("LiteRT float32", "model.tflite"),
            "LiteRT 2.3, int8": ("LiteRT int8", "model_int8.tflite")}


def test_the_deployment_table_is_the_latency_and_quantization_files():
    latency, quantization = _load("serve_latency_default.json"), _load("quantization_default_fashion_mnist.json")
    rows = _table((ROOT / "README.md").read_text(), "| runtime | batch 1")
    assert len(rows) == len(RUNTIMES)
    for runtime, batch_1, batch_256, size, accuracy in rows:
        served, scored = next(v for k, v in RUNTIMES.items() if runtime.startswith(k))
        by_batch = {r["batch"]: r for r in latency["rows"] if r["runtime"] == served}
        p50, p99 = batch_1.split("/")
        _shown(p50, by_batch[1]["p50_ms"])
        _shown(p99, by_batch[1]["p99_ms"])
        _shown(batch_256, by_batch[256]["examples_per_s_at_p50"])
        _shown(size, by_batch[1]["bytes"], 1e-6)
        _shown(accuracy, next(r for r in quantization["rows"] if r["format"].startswith(scored))["test_accuracy"])


def _sentence(pattern: str, what: str) -> re.Match:
    """The README's sentence matching `pattern` (line breaks read as spaces)."""
    found = re.search(pattern, " ".join((ROOT / "README.md").read_text().split()))
    assert found, f"the README's {what} changed: update this test with it"
    return found


def test_the_adding_sentence_is_the_medians_and_ranges_of_its_seeds():
    found = _sentence(r"test MSE falls below ([\d.]+) after a median of ([\d,]+) steps \(([\d,]+)–([\d,]+)\) "
                      r"with a GRU, ([\d,]+) \(([\d,]+)–([\d,]+)\) with an LSTM, never in ([\d,]+) with the "
                      r"vanilla RNN", "sentence on the adding problem")
    record = _load("adding.json")
    runs = [r for r in record["runs"].values() if r["seq_len"] == 100]  # "at T = 100"
    reached = {cell: [r["reached"] for r in runs if r["cell"] == cell] for cell in ("gru", "lstm", "simple")}
    threshold, *numbers = [float(n.replace(",", "")) for n in found.groups()]
    assert record["threshold"] == threshold and record["below"] and record["metric"] == "test_mse"
    for cell, (median, low, high) in (("gru", numbers[0:3]), ("lstm", numbers[3:6])):
        assert len(reached[cell]) >= 3 and None not in reached[cell], cell
        assert (median, low, high) == (statistics.median(reached[cell]), min(reached[cell]), max(reached[cell])), cell
    assert len(reached["simple"]) >= 3 and set(reached["simple"]) == {None}
    assert record["budget_steps"] == numbers[6]


def test_the_bfloat16_bullet_is_the_precision_files_differences_and_speedups():
    found = _sentence(r"On an AMX Xeon, (\d+) seeds each: ([−+][\d.]+) / ([−+][\d.]+) points of test accuracy from "
                      r"float32 with the seed / default preset, ([\d.]+)× / ([\d.]+)× faster epochs "
                      r"\(`precision_fashion_mnist.json`\)", "--precision bfloat16 bullet")
    record = _load("precision_fashion_mnist.json")
    assert len(record["seeds"]) == int(found.group(1)) >= 3
    assert "Xeon" in _cpu(record)["model"] and {"amx_tile", "amx_bf16"} <= set(_cpu(record)["flags"])
    for preset, points, speedup in (("seed", found.group(2), found.group(4)),
                                    ("default", found.group(3), found.group(5))):
        runs = record["presets"][preset]
        f32, b16 = runs["float32"], runs["bfloat16"]
        assert len(f32["test_accuracy"]) == len(b16["test_accuracy"]) == len(record["seeds"]), preset
        # Recomputed from the seeds' accuracies and the epochs' samples/s, not read from the file's own summary.
        difference = 100 * (statistics.mean(b16["test_accuracy"]) - statistics.mean(f32["test_accuracy"]))
        _shown(points.lstrip("+−"), abs(difference))
        assert points[0] == ("−" if difference < 0 else "+") and abs(difference) <= record["bar_points"], preset
        _shown(speedup, b16["samples_per_second"] / f32["samples_per_second"])
