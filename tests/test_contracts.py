"""Contracts every task, dataset and save path keeps; a toy fourth task registered here alone; properties of the
pure rules (config precedence, .npz validation, tune's role, the execution divisor, the resumed step budget)."""

import dataclasses
import json
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import op_determinism_restored, synthetic_arrays
from tf_rnn import config as config_lib
from tf_rnn import cli, datasets, fused, predict, tasks, train, tune, tune_chief
from tf_rnn.arrays import Arrays, DataError
from tf_rnn.config import ConfigError, TrainConfig
from tf_rnn.datasets import DataSpec
from tf_rnn.models import float32_model

TINY = dict(units=4, layers=1, batch_size=32, lr=1e-2, dropout=0.0, epochs=1, validation_split=0.2,
            label_smoothing=0.0)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- a fourth task, defined here alone -------------------------------------------------------------------------


class Binary(tasks.Task):
    """Is the label 1? One logit per sequence, sigmoid cross-entropy; `positive` is the served probability."""

    name = "binary"
    test_scalars = ("test_accuracy", "test_loss")
    hparams_metrics = ("test_accuracy",)

    def head(self, features, spec):
        return keras.layers.Dense(1, name="logit")(features)

    def loss(self, config):
        return keras.losses.BinaryCrossentropy(from_logits=True)

    def compiled_metrics(self):
        return [keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)]

    def batch_scores(self, targets, outputs):
        return tf.cast(tf.equal(tf.cast(outputs[:, 0] > 0, tf.int64), tf.cast(targets, tf.int64)), tf.float32)

    def check_targets(self, y, n, spec, where):
        if y.shape != (n,) or not np.isin(y, (0, 1)).all():
            raise DataError(f"{where} is {list(y.shape)}; expected [{n}] labels 0 or 1")
        return y.astype(np.float32)

    def evaluate(self, outputs, targets, spec):
        p = 1 / (1 + np.exp(-outputs[:, 0]))
        loss = -np.mean(targets * np.log(p + 1e-12) + (1 - targets) * np.log(1 - p + 1e-12))
        return {"test_accuracy": float(((outputs[:, 0] > 0) == targets).mean()), "test_loss": float(loss),
                "confusion_matrix": None}

    def summary(self, metrics):
        return f"binary accuracy {metrics['test_accuracy']:.4f} on {metrics['test_examples']} examples"

    def serving_outputs(self, outputs):
        return {"logit": outputs[:, 0], "positive": tf.sigmoid(outputs[:, 0])}

    def describe_outputs(self, spec):
        return "positive [batch]"

    def format_output(self, out, k, spec):
        return f"p(positive)={out['positive'][k]:.4f}"


def _sign_arrays(config) -> Arrays:
    rng = np.random.default_rng(config.seed)
    x = rng.normal(size=(200, 7, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64)
    return Arrays(x[:160], y[:160], x[160:], y[160:], source="toy sign")


def _sign_spec(config, arrays=None) -> DataSpec:
    return DataSpec("sign", (7, 2), "binary")


@pytest.fixture(scope="module")
def binary_task():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tasks.REGISTRY, "binary", Binary())
        mp.setitem(datasets.REGISTRY, "sign", datasets.DatasetEntry(_sign_arrays, _sign_spec, "toy: sign of a sum"))
        yield


# --- every kind of dataset, trained once per module ---------------------------------------------------------------


def _npz(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 5, 3)).astype(np.float32)
    if kind == "classes":
        y = (x[:, :, 0].mean(1) > 0).astype(np.uint8)  # uint8 labels: an integer dtype like any other.
    else:
        y = np.stack([x[:, :, 0].mean(1), x[:, :, 1].max(1)], axis=1).astype(np.float64)
    return Arrays(x[:160], y[:160], x[160:], y[160:], source=f"npz {kind}")


def _generated(make, n, length):
    rng = np.random.default_rng(0)
    (a, b), (c, d) = make(n, length, rng), make(40, length, rng)
    return Arrays(a, b, c, d)


# name → (config overrides, arrays or None for the registry's own loader, how a test-set number is recomputed)
KINDS = {
    "image_rows": (dict(dataset="mnist"), lambda: synthetic_arrays(160, 40)),
    "image_permuted": (dict(dataset="fashion_mnist", sequence="permuted", augment="none"),
                       lambda: synthetic_arrays(160, 40)),
    "adding": (dict(dataset="adding", seq_len=6), lambda: _generated(datasets.adding_arrays, 160, 6)),
    "copy": (dict(dataset="copy", seq_len=3), lambda: _generated(datasets.copy_arrays, 160, 3)),
    "npz_classes": (dict(dataset="classes.npz"), lambda: _npz("classes")),
    "npz_targets": (dict(dataset="targets.npz"), lambda: _npz("targets")),
    "toy_binary": (dict(dataset="sign"), None),
    # The image rows again, trained with --precision bfloat16 (its Dense head under mixed_bfloat16): every export of
    # it serves models.float32_model's copy. Only where the CPU has AMX tiles (the others refuse the flag).
    "image_rows_bfloat16": (dict(dataset="mnist", precision="bfloat16"), lambda: synthetic_arrays(160, 40)),
}


def _run(trained, kind):
    if trained[kind] is None:
        pytest.skip("--precision bfloat16 trains only where the CPU has AMX tiles for bfloat16; this one has none")
    return trained[kind]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, binary_task):
    """Each kind trained one epoch through `train_and_evaluate`: {kind: (workdir, metrics, test arrays)}."""
    runs = {}
    with op_determinism_restored():
        for kind, (overrides, make) in KINDS.items():
            config = config_lib.resolve(overrides={**TINY, **overrides})
            if config.precision == "bfloat16" and not fused.amx_available():
                runs[kind] = None
                continue
            arrays = make() if make else _sign_arrays(config)
            workdir = tmp_path_factory.mktemp(kind)
            metrics = train.train_and_evaluate(config, workdir, arrays=arrays if make else None)
            runs[kind] = (workdir, metrics, arrays)
    return runs


def _float_inputs(spec, arrays):
    x = arrays.x_test
    return (x.astype(np.float32) / 255) if x.dtype == np.uint8 else x.astype(np.float32)


def _independent_test_metric(task_name, outputs, y):
    """The test metric recomputed here with numpy, not with the task's own code."""
    if task_name == "regression":
        return "test_mse", float(((outputs.astype(np.float64) - y) ** 2).mean())
    if task_name == "binary":
        return "test_accuracy", float(((outputs[:, 0] > 0) == y).mean())
    return "test_accuracy", float((outputs.argmax(-1) == y).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_records_its_tasks_metrics_from_the_saved_best_model(trained, kind):
    workdir, metrics, arrays = _run(trained, kind)
    spec = DataSpec.from_dict(json.loads((workdir / "data_spec.json").read_text()))
    task = spec.task_type
    assert metrics["task"] == spec.task and set(task.test_scalars) <= set(metrics)
    # One per test sequence, whatever the task scores per sequence (the copy task scores 3 recalled steps each).
    assert metrics["test_examples"] == len(arrays.x_test)
    model = keras.saving.load_model(workdir / "model.keras")
    outputs = model.predict(_float_inputs(spec, arrays), verbose=0)
    key, value = _independent_test_metric(spec.task, outputs, arrays.y_test)
    assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6)
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["test_examples"] == metrics["test_examples"] and saved[key] == pytest.approx(value, rel=1e-5)
    assert task.summary(metrics).split(" on ")[-1].startswith(str(len(arrays.x_test)))


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kinds_saved_model_answers_as_keras_does(trained, kind):
    workdir, _, arrays = _run(trained, kind)
    spec = DataSpec.from_dict(json.loads((workdir / "data_spec.json").read_text()))
    model = keras.saving.load_model(workdir / "model.keras")
    x = _float_inputs(spec, arrays)[:9]
    served = tf.saved_model.load(str(workdir / "saved_model"))
    out = {k: v.numpy() for k, v in served.signatures["serving_default"](**{spec.input_name: tf.constant(x)}).items()}
    expected = _keras_outputs(model, spec, x)
    assert set(out) == set(expected)
    for name in out:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    if spec.image:  # Raw pixels through serve_uint8: the same answers as x / 255 through the float signature.
        raw = served.signatures["serve_uint8"](images=tf.constant(arrays.x_test[:9]))
        for name in out:
            np.testing.assert_allclose(raw[name].numpy(), out[name], rtol=1e-5, atol=1e-6, err_msg=name)
    else:
        assert "serve_uint8" not in served.signatures


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_predicts_one_line_per_example_from_its_file(trained, kind, tmp_path, capsys):
    workdir, _, arrays = _run(trained, kind)
    spec = DataSpec.from_dict(json.loads((workdir / "data_spec.json").read_text()))
    np.save(tmp_path / "x.npy", arrays.x_test[:5])
    capsys.readouterr()
    assert predict.main([str(workdir / "saved_model"), str(tmp_path / "x.npy"), "--batch-size", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    served = tf.saved_model.load(str(workdir / "saved_model")).signatures["serving_default"]
    out = {k: v.numpy() for k, v in served(**{spec.input_name: tf.constant(_float_inputs(spec, arrays)[:5])}).items()}
    assert lines == [f"{tmp_path / 'x.npy'}[{k}]\t{spec.task_type.format_output(out, k, spec)}" for k in range(5)]


# --- every runtime a model is deployed to: LiteRT, ONNX, one step at a time ------------------------------------


@pytest.fixture(scope="module")
def deployed(trained, tmp_path_factory):
    """Each kind's model.keras exported as .tflite (batch 3) and .onnx: {kind: (model, spec, tflite, onnx)}."""
    from tf_rnn import export

    out = {}
    for kind, run in trained.items():
        if run is None:
            continue
        workdir = run[0]
        spec = DataSpec.from_dict(json.loads((workdir / "data_spec.json").read_text()))
        model = keras.saving.load_model(workdir / "model.keras")
        folder = tmp_path_factory.mktemp(f"deployed_{kind}")
        tflite, = export.export_litert(model, folder, spec, batch=3)
        out[kind] = (model, spec, tflite, export.export_onnx(model, folder, spec))
    return out


def _keras_outputs(model, spec, x):
    """What every export must answer: the model's outputs, computed in float32 (models.float32_model)."""
    model = float32_model(model)
    return {k: np.asarray(v) for k, v in spec.task_type.serving_outputs(model(x, training=False)).items()}


def _assert_outputs_match(got, expected, what):
    assert set(got) == set(expected), what
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5, err_msg=f"{what}: {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_runs_in_litert_and_onnx_as_keras_does(trained, deployed, kind):
    from tf_rnn import litert, onnx_export

    _run(trained, kind)
    model, spec, tflite, onnx_file = deployed[kind]
    x = _float_inputs(spec, trained[kind][2])
    lstm_layers = sum(isinstance(r, keras.layers.LSTM) for r in model.get_layer("rnn").rnns)
    runner = litert.Runner(tflite)
    for batch in (x[:3], x[3:6]):  # Twice: the fused LSTM's state must not leak from one request to the next.
        _assert_outputs_match(runner(**{spec.input_name: batch}), _keras_outputs(model, spec, batch), "LiteRT")
    if spec.image:
        raw = trained[kind][2].x_test[:3]
        _assert_outputs_match(runner("serve_uint8", images=raw), _keras_outputs(model, spec, x[:3]), "serve_uint8")
    for signature, ops in litert.op_names(tflite.read_bytes()).items():
        assert not litert.disallowed(ops), (signature, ops)
        if signature != "step":
            assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == lstm_layers, (signature, ops)
    session = onnx_export.Runner(onnx_file)
    for n in (1, 7):  # The batch is dynamic.
        _assert_outputs_match(session(**{spec.input_name: x[:n]}), _keras_outputs(model, spec, x[:n]), "ONNX")
    import onnx

    ops = [node.op_type for node in onnx.load(onnx_file).graph.node]
    assert ops.count("LSTM") == lstm_layers and not {"Loop", "Scan"} & set(ops), ops


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_kind_answers_one_step_at_a_time_as_the_full_sequence(trained, deployed, kind):
    """The SavedModel's and the .tflite's `step`, fed the sequence the recurrent stack reads from `zero_state`:
    the full model's outputs at the last step, and per-step tasks at each of their scored steps."""
    from tf_rnn import litert

    workdir, _, arrays = _run(trained, kind)
    model, spec, tflite, _ = deployed[kind]
    x = _float_inputs(spec, arrays)[:3]
    view = np.asarray(model.get_layer("sequence_view")(x)) if spec.image and "sequence_view" in \
        [layer.name for layer in model.layers] else x
    full = _keras_outputs(model, spec, x)
    served = tf.saved_model.load(str(workdir / "saved_model"))
    state = {k: v.numpy() for k, v in served.signatures["zero_state"](batch_size=tf.constant(3)).items()}
    lite_state = {k: np.zeros_like(v) for k, v in state.items()}
    runner, scored = litert.Runner(tflite), spec.output_steps or 1
    first_scored = view.shape[1] - scored
    for t in range(view.shape[1]):
        out = {k: v.numpy() for k, v in served.signatures["step"](
            inputs_t=tf.constant(view[:, t]), **{k: tf.constant(v) for k, v in state.items()}).items()}
        lite = runner("step", inputs_t=view[:, t], **lite_state)
        state, lite_state = {k: out.pop(k) for k in state}, {k: lite.pop(k) for k in lite_state}
        if t >= first_scored:
            at = {k: v[:, t - first_scored] if spec.output_steps else v for k, v in full.items()}
            _assert_outputs_match(out, at, f"SavedModel step {t}")
            _assert_outputs_match(lite, at, f"LiteRT step {t}")


def test_no_module_outside_tasks_names_a_task_kind():
    """Branching on a task's kind lives in tasks.py: elsewhere a task kind is only named where a dataset says
    which task it is (datasets.py)."""
    import pathlib

    import tf_rnn

    root = pathlib.Path(tf_rnn.__file__).parent
    pattern = re.compile(r"task\s*==|\.task\s+in\b|\b(REGRESSION|PER_STEP|CLASSIFICATION)\b|MeanSquaredError\)")
    offenders = [f"{p.name}:{n}" for p in root.glob("*.py") if p.name not in ("tasks.py", "datasets.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == [], offenders


def test_the_toy_task_goes_through_tune_too(tmp_path, binary_task):
    settings_ = tune.TuneConfig(tuner="random", max_trials=1, epochs=1, final_epochs=1, dataset="sign",
                                validation_split=0.25)
    result = tune.tune_and_evaluate(settings_, tmp_path / "search")
    assert result["task"] == "binary" and result["finished_trials"] == 1
    assert result["test_examples"] == 40 and 0 <= result["test_accuracy"] <= 1
    assert (tmp_path / "search" / "best_run" / "saved_model" / "saved_model.pb").is_file()


# --- properties of the pure rules -----------------------------------------------------------------------------

# A few fields with distinct, valid values for each place a value can come from.
FIELD_VALUES = {"units": (8, 16, 24, 32), "lr": (0.1, 0.01, 0.001, 0.02), "layers": (3, 2, 4, 5),
                "early_stopping_patience": (7, 8, 9, 11)}
PLACES = ("preset", "dataset", "file", "flag")


@SETTINGS
@given(given_in=st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.sets(st.sampled_from(PLACES))),
       dataset=st.sampled_from(["fashion_mnist", "adding"]), dataset_in=st.sampled_from(["default", "file", "flag"]))
def test_config_precedence_defaults_preset_dataset_file_flags(monkeypatch, given_in, dataset, dataset_in):
    """defaults < preset < the dataset's defaults < config file < flags, for any field given in any places; the
    dataset's defaults apply whether the dataset was named by a flag or by the config file."""
    presets = {"seed": {}, "default": {}}  # The preset named below, as the probe fills it.
    entry = dataclasses.replace(datasets.REGISTRY[dataset], defaults=dict(datasets.REGISTRY[dataset].defaults))
    file_values, flags = {}, {"preset": "seed"}
    for field, places in given_in.items():
        value = dict(zip(PLACES, FIELD_VALUES[field]))
        if "preset" in places:
            presets["seed"][field] = value["preset"]
        if "dataset" in places:
            entry.defaults[field] = value["dataset"]
        if "file" in places:
            file_values[field] = value["file"]
        if "flag" in places:
            flags[field] = value["flag"]
    if dataset_in == "file":
        file_values["dataset"] = dataset
    elif dataset_in == "flag":
        flags["dataset"] = dataset
    with monkeypatch.context() as mp:
        mp.setattr(config_lib, "PRESETS", presets)
        mp.setitem(datasets.REGISTRY, dataset, entry)
        config = config_lib.resolve(file_values=file_values, overrides=flags)
    named = dataset if dataset_in != "default" else TrainConfig.dataset
    # The rule restated: each later layer overrides the earlier ones.
    layers = [presets["seed"], entry.defaults if named == dataset else datasets.REGISTRY[named].defaults,
              file_values, flags]
    for field in FIELD_VALUES:
        expected = getattr(TrainConfig, field)
        for layer in layers:
            expected = layer.get(field, expected)
        assert getattr(config, field) == expected, (field, given_in.get(field))


def test_a_config_file_naming_a_memory_task_gets_that_tasks_defaults(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"dataset": "adding"}))
    config, _ = train.parse_flags(["--config", str(tmp_path / "c.json")])
    for field, value in datasets.REGISTRY["adding"].defaults.items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize("sequence_in", ["flag", "file"])
@pytest.mark.parametrize("view", datasets.SEQUENCE_VIEWS)
def test_each_image_view_gets_its_own_defaults_under_the_users_values(tmp_path, view, sequence_in):
    """Pixel and permuted views train without the row-wise recipe's mirroring and label smoothing; a flag or a
    config file still wins, and the rows view keeps the dataset's own choices."""
    (tmp_path / "c.json").write_text(json.dumps({"sequence": view} if sequence_in == "file" else {}))
    flags = ["--config", str(tmp_path / "c.json"), "--dataset", "fashion_mnist"]
    flags += ["--sequence", view] if sequence_in == "flag" else []
    config, _ = train.parse_flags(flags)
    own = datasets.VIEW_DEFAULTS.get(view, {})
    assert (config.label_smoothing, config.augment) == (own.get("label_smoothing", TrainConfig.label_smoothing),
                                                         own.get("augment", TrainConfig.augment))
    assert view == "rows" or (config.label_smoothing, datasets.get("fashion_mnist").mirrors(config.augment)) == (0, False)
    config, _ = train.parse_flags([*flags, "--label-smoothing", "0.2", "--augment", "hflip"])
    assert (config.label_smoothing, config.augment) == (0.2, "hflip")


DTYPES = ["uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool", "U1"]


@SETTINGS
@given(y_dtype=st.sampled_from(DTYPES), y_extra=st.sampled_from([(), (1,), (2,), (3, 1)]),
       x_dtype=st.sampled_from(DTYPES), x_rank=st.sampled_from([2, 3, 4]))
def test_npz_arrays_are_accepted_exactly_when_the_readme_says(tmp_path, y_dtype, y_extra, x_dtype, x_rank):
    """README: x [N, T, F] of numbers (not bool); y integer labels [N] in [0, classes) (classification) or float
    targets [N] or [N, K] (regression)."""
    n = 12
    x = (np.arange(n * 12).reshape({2: (n, 12), 3: (n, 4, 3), 4: (n, 4, 3, 1)}[x_rank]) % 2).astype(x_dtype)
    y = (np.arange(n * int(np.prod(y_extra or (1,)))).reshape((n, *y_extra)) % 2).astype(y_dtype)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    config = types.SimpleNamespace(dataset=str(path), data_dir=None, seed=0, seq_len=None, sequence="rows")
    x_ok = x_rank == 3 and x_dtype not in ("bool", "U1")
    label = np.issubdtype(np.dtype(y_dtype), np.integer) and y_extra == ()
    target = np.issubdtype(np.dtype(y_dtype), np.floating) and len(y_extra) <= 1
    if x_ok and (label or target):
        arrays, spec = datasets.load(config)
        assert spec.task == ("classification" if label else "regression")
        assert arrays.x_train.dtype == np.float32 and len(arrays.y_test) == n
    else:
        with pytest.raises(DataError) as e:
            datasets.load(config)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


@SETTINGS
@given(tuner_id=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
       port=st.integers(1, 65535))
def test_role_is_keras_tuners_rule_a_tuner_id_containing_chief_is_the_chief(tuner_id, port):
    env = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    role = tune.role_from_env(env)
    assert role.kind == ("chief" if "chief" in tuner_id else "worker")
    assert role.tuner_id == tuner_id and role.address == f"127.0.0.1:{port}"


@SETTINGS
@given(tuner_id=st.text(alphabet="abcdefhiorkw0123456789-", min_size=1, max_size=10), with_ip=st.booleans(),
       with_rest=st.booleans())
def test_role_agrees_with_keras_tuners_own_reading_of_the_environment(monkeypatch, tuner_id, with_ip, with_rest):
    """The role tf_rnn prints and acts on is the one keras-tuner's tuner acts on: the two never disagree (where
    keras-tuner raises on missing variables, tf_rnn refuses them in one line)."""
    from keras_tuner.src.distribute import utils as dist_utils

    env = {**({"KERASTUNER_ORACLE_IP": "127.0.0.1"} if with_ip else {}),
           **({"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_PORT": "8000"} if with_rest else {})}
    with monkeypatch.context() as mp:
        for name in tune.ORACLE_ENV:
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        try:
            theirs = ("chief" if dist_utils.is_chief_oracle() else "worker") if dist_utils.has_chief_oracle() \
                else "single"
        except RuntimeError:
            theirs = "refused"
    try:
        ours = tune.role_from_env(env).kind
    except cli.UsageError:
        ours = "refused"
    assert ours == theirs


@pytest.mark.parametrize("tuner_id", ["chief0", "chief", "the-chief-1"])
def test_any_tuner_id_containing_chief_is_the_chief(tuner_id):
    env = {"KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert tune.role_from_env(env).kind == "chief"


@SETTINGS
@given(requested=st.integers(1, 64), steps_per_epoch=st.integers(1, 500))
def test_execution_steps_is_the_largest_divisor_of_an_epoch_at_most_the_request(requested, steps_per_epoch):
    got = train.execution_steps(requested, steps_per_epoch)
    assert 1 <= got <= requested and steps_per_epoch % got == 0
    assert not any(steps_per_epoch % d == 0 for d in range(got + 1, requested + 1))


@SETTINGS
@given(steps_per_epoch=st.integers(1, 50), epochs=st.integers(1, 6), cut=st.integers(0, 49), data=st.data())
def test_a_resumed_run_trains_exactly_the_rest_of_its_step_budget(steps_per_epoch, epochs, cut, data):
    budget = max(1, epochs * steps_per_epoch - cut)
    done_epochs = data.draw(st.integers(0, (budget - 1) // steps_per_epoch))  # Backed-up, finished epochs.
    before = done_epochs * steps_per_epoch
    assert before + train.remaining_steps(budget, done_epochs or None, steps_per_epoch) == budget


# --- tune's chief: a reloaded oracle's repair -------------------------------------------------------------------


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "RUNNING", "IDLE"])
def test_a_reloaded_oracle_retries_only_the_trials_that_are_not_over(status):
    trials = {"00": types.SimpleNamespace(status=status), "01": types.SimpleNamespace(status="RUNNING")}
    oracle = types.SimpleNamespace(trials=trials, _retry_queue=["00", "01"])
    tune_chief.repair_reloaded_oracle(oracle)
    over = status in ("COMPLETED", "FAILED")
    assert oracle._retry_queue == (["01"] if over else ["00", "01"])


def test_config_errors_name_the_flag_once():
    with pytest.raises(ConfigError) as e:
        config_lib.resolve(overrides={"units": 0})
    assert str(e.value).count("--units") == 1


def test_every_planted_bug_still_matches_the_code_exactly_once():
    """tests/planted_bugs.py plants each bug by replacing its correct text; text that drifted from the code would
    plant nothing (and the list would claim a promise it no longer checks)."""
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("planted_bugs", root / "tests" / "planted_bugs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    drifted = [(name, file) for name, file, correct, _, _ in module.BUGS
               if (root / file).read_text().count(correct) != 1]
    assert drifted == []
    assert all((root / test.split()[0]).is_file() for *_, tests in module.BUGS for test in [tests])


# --- every bound of TrainConfig, and the --config file's refusals ------------------------------------------------

# field: (values accepted at the edge, values refused, the fix every refusal names) — as `--help` states them.
BOUNDS = {
    **{name: ([1], [0, -3], "must be >= 1") for name in ("layers", "units", "batch_size", "epochs",
                                                           "steps_per_execution", "steps")},
    "lr": ([1e-9], [0.0, -1e-3], "must be > 0"),
    **{name: ([0.0, 0.999], [1.0, -0.01], "must be in [0, 1)") for name in ("dropout", "label_smoothing",
                                                                             "validation_split")},
    "l1": ([0.0], [-1e-6], "must be >= 0"),
    "l2": ([0.0], [-1e-6], "must be >= 0"),
    "early_stopping_patience": ([0], [-1], "must be >= 0"),
    "clipnorm": ([None, 1e-6], [0.0, -1.0], "must be > 0 (leave it out for no clipping)"),
}


@pytest.mark.parametrize("field", sorted(BOUNDS))
def test_every_bound_refuses_the_first_bad_value_naming_the_flag_and_accepts_the_edge(field):
    accepted, refused, fix = BOUNDS[field]
    for value in accepted:
        assert getattr(config_lib.resolve(overrides={field: value}), field) == value
    for value in refused:
        with pytest.raises(ConfigError) as e:
            config_lib.resolve(overrides={field: value})
        assert str(e.value) == f"--{field.replace('_', '-')} {value!r}: {fix}"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a readable JSON config (Expecting property name enclosed in double quotes: line 1 column 2 "
                  "(char 1))"),
    ("[1, 2]", "expected a JSON object of config fields"),
    ('{"units": 8, "colour": 1, "bogus": 2}', "unknown field(s) bogus, colour; known: "),
])
def test_a_config_file_is_refused_in_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as e:
        config_lib.load_json(path)
    assert str(e.value).startswith(f"--config {str(path)!r}: {message}") and "\n" not in str(e.value)
    if "known: " in message:
        assert str(e.value).endswith(", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig))))


def test_a_config_file_holding_fields_returns_exactly_them(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"units": 8, "lr": 0.5}))
    assert config_lib.load_json(tmp_path / "c.json") == {"units": 8, "lr": 0.5}


def test_a_config_file_from_tune_loads_without_its_trial_annotation(tmp_path):
    """best_config.json names the trial it came from (`_trial`, not a field): `--config` takes it as it is."""
    best = config_lib.resolve(overrides=dict(units=48, lr=0.003))
    (tmp_path / "best_config.json").write_text(json.dumps({config_lib.TRIAL_KEY: "07", **best.to_dict()}))
    assert config_lib.load_json(tmp_path / "best_config.json") == best.to_dict()


def test_help_lists_every_field_as_a_flag_with_its_default_and_choices(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_flags(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare word by word.
    assert e.value.code == 0
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert flag in text and " ".join(f.metadata["help"].split()) in text, flag
        if f.default is not None:
            assert f"(default: {f.default})" in text, flag
        if f.metadata.get("choices"):
            assert "{" + ",".join(f.metadata["choices"]) + "}" in text, flag


def test_flags_typed_by_the_dataclass_parse_their_type_and_refuse_others(capsys):
    config, _ = train.parse_flags(["--units", "24", "--lr", "0.5", "--clipnorm", "2", "--seed", "-3"])
    assert (config.units, config.lr, config.clipnorm, config.seed) == (24, 0.5, 2.0, -3)
    assert isinstance(config.lr, float) and isinstance(config.clipnorm, float)
    with pytest.raises(SystemExit) as e:
        train.parse_flags(["--units", "2.5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --units: '2.5' is not an integer" in err and err.count("\n") == 1
    assert err.count("--units") == 1  # The flag named once, by argparse's own prefix.


def test_a_config_file_may_name_the_preset_and_a_flag_overrides_it():
    seed = config_lib.resolve(file_values={"preset": "seed"})
    assert seed.preset == "seed" and seed.steps == config_lib.PRESETS["seed"]["steps"] and seed.layers == 1
    assert config_lib.resolve(file_values={"preset": "seed"}, overrides={"preset": "default"}).layers == 2
    with pytest.raises(ConfigError) as e:
        config_lib.resolve(file_values={"preset": "fast"})
    assert str(e.value) == "--preset 'fast': choose one of: seed, default"


@pytest.mark.parametrize("flags, file_values, steps", [
    ({"epochs": 3}, {}, None),  # --epochs alone replaces the seed preset's step budget...
    ({"epochs": 3, "steps": 40}, {}, 40),  # ...but not a --steps given with it,
    ({"steps": 40}, {}, 40),
    ({}, {"epochs": 3}, config_lib.SEED_STEPS),  # and a config file's epochs keep the preset's budget.
    ({}, {}, config_lib.SEED_STEPS),
])
def test_epochs_given_as_a_flag_replace_the_presets_step_budget(flags, file_values, steps):
    config = config_lib.resolve("seed", file_values=file_values, overrides=flags)
    assert config.steps == steps and config.epochs == flags.get("epochs", file_values.get("epochs", 2))


@pytest.mark.parametrize("values, message", [
    ({"cell": "transformer"}, "--cell 'transformer': choose one of: lstm, gru, simple"),
    ({"units": None}, "--units None: must be set (an integer)"),
    ({"units": 8.5}, "--units 8.5: must be an integer, not float"),
])
def test_a_config_files_values_are_checked_as_flags_are(values, message):
    with pytest.raises(ConfigError) as e:
        config_lib.resolve(file_values=values)
    assert str(e.value) == message


def test_a_run_written_before_a_field_existed_resumes(tmp_path):
    """A config.json from an older tf_rnn lacks newer fields: they count as their defaults, not as changes."""
    from tf_rnn import workdir

    config = config_lib.resolve(overrides={"units": 8})
    (tmp_path / "w").mkdir()
    older = {k: v for k, v in config.to_dict().items() if k != "label_smoothing"}
    (tmp_path / "w" / "config.json").write_text(json.dumps(older))
    workdir.prepare(config, tmp_path / "w")
    newer = config_lib.resolve(overrides={"units": 8, "label_smoothing": 0.2})
    with pytest.raises(train.RunError, match=r"another config \(label_smoothing: 0.1 -> 0.2\)"):
        workdir.prepare(newer, tmp_path / "w")
    # The other way round: a run saved by a newer tf_rnn, with a field this one lacks, is not resumed blind to it.
    (tmp_path / "n").mkdir()
    (tmp_path / "n" / "config.json").write_text(json.dumps({**config.to_dict(), "warmup_steps": 100}))
    with pytest.raises(train.RunError, match=r"another config \(warmup_steps: 100 -> None\)"):
        workdir.prepare(config, tmp_path / "n")


def test_a_preset_is_recorded_and_epochs_replace_its_step_budget_unless_steps_are_given():
    """What config.json and HParams say a run was, and the seed preset's budget under --epochs (mutmut: resolve's
    survivors, reached before only through test_train's CLI tests)."""
    seed = config_lib.resolve("seed")
    assert (seed.preset, seed.steps) == ("seed", config_lib.SEED_STEPS)
    assert config_lib.resolve(file_values={"preset": "seed"}).preset == "seed"
    assert config_lib.resolve("seed", overrides={"epochs": 4}).steps is None
    assert config_lib.resolve("seed", overrides={"epochs": 4, "steps": 100}).steps == 100


@pytest.mark.parametrize("dataset", ["adding", "copy"])
def test_seq_len_accepts_two_steps_and_refuses_one(dataset):
    assert config_lib.resolve(overrides={"dataset": dataset, "seq_len": 2}).seq_len == 2
    with pytest.raises(ConfigError) as e:
        config_lib.resolve(overrides={"dataset": dataset, "seq_len": 1})
    assert str(e.value) == "--seq-len 1: must be >= 2"
