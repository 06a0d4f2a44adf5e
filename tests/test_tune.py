"""tf_rnn.tune: the HyperModel, a tiny search's outputs, resuming, and refusing to mix searches."""

import csv
import json

import keras
import keras_tuner as kt
import pytest

from support import synthetic_arrays
from tf_rnn import train, tune
from tf_rnn.config import ConfigError, TrainConfig
from tf_rnn.layers import StackedRNN

TINY = dict(tuner="random", max_trials=2, epochs=2, final_epochs=1, early_stopping_patience=1, validation_split=0.2)


def hypermodel(**overrides):
    return tune._hypermodel_class()(tune.TuneConfig(**{**TINY, **overrides}).base_config(), synthetic_arrays())


def rnn_of(model) -> StackedRNN:
    return model.get_layer("rnn")


def test_build_with_default_hyperparameters_uses_build_model():
    hp = kt.HyperParameters()
    model = hypermodel().build(hp)
    rnn = rnn_of(model)
    # Defaults: the first choice / the minimum of each range.
    assert (rnn.cell, rnn.units, rnn.dropout, rnn.activation, rnn.l2) == ("lstm", [64], 0.0, "tanh", 0.0)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert set(hp.values) == set(tune.SEARCH_SPACE)  # build only samples the model's settings; fit samples the batch.


def test_build_with_fixed_overrides():
    hp = kt.HyperParameters()
    for name, value in dict(cell="gru", layers=3, units=32, dropout=0.3, optimizer="nesterov", lr=0.05,
                            activation="softsign", l2=1e-3).items():
        hp.Fixed(name, value)
    model = hypermodel().build(hp)
    rnn = rnn_of(model)
    assert (rnn.cell, rnn.units, rnn.dropout, rnn.activation, rnn.l2) == ("gru", [32, 32, 32], 0.3, "softsign", 1e-3)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and model.optimizer.nesterov


class CountFits(keras.callbacks.Callback):
    """Counts trial fits; keras-tuner deep-copies callbacks per trial, so the count lives on the class."""

    fits = 0
    interrupt_at = None

    def on_train_begin(self, logs=None):
        CountFits.fits += 1
        if CountFits.fits == CountFits.interrupt_at:
            raise KeyboardInterrupt  # As if the search were killed in the middle of this trial.


def hparams_summaries(logdir):
    """{run folder name ('' for the root): (experiment columns or None, session values or None)} from the events."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import metadata

    found = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != metadata.PLUGIN_NAME:
                    continue
                content = value.metadata.plugin_data.content
                columns, values = found.get(f.parent.relative_to(logdir).as_posix().strip("."), (None, None))
                if value.tag == metadata.EXPERIMENT_TAG:
                    columns = [h.name for h in metadata.parse_experiment_plugin_data(content).hparam_infos]
                elif value.tag == metadata.SESSION_START_INFO_TAG:
                    info = metadata.parse_session_start_info_plugin_data(content)
                    values = {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}
                found[f.parent.relative_to(logdir).as_posix().strip(".")] = (columns, values)
    return found


def test_search_writes_ranked_trials_best_config_and_tested_best_run(tmp_path, capsys):
    workdir = tmp_path / "s"
    result = tune.tune_and_evaluate(tune.TuneConfig(**TINY), workdir, arrays=synthetic_arrays())
    out = capsys.readouterr().out
    with (workdir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and [r["rank"] for r in rows] == ["1", "2"]
    assert float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])
    assert {"cell", "layers", "units", "optimizer", "lr", "batch_size", "activation", "l2", "dropout"} <= set(rows[0])
    best = json.loads((workdir / "best_config.json").read_text())
    assert best.pop("_trial") == rows[0]["trial"] == result["best_trial"]  # The same id everywhere.
    assert best["cell"] == rows[0]["cell"] and best["batch_size"] == int(rows[0]["batch_size"])
    config, _ = train.parse_flags(["--config", str(workdir / "best_config.json")])  # train accepts it.
    assert config.to_dict() == best
    for row in rows:  # The console names each trial by the id trials.csv and TensorBoard use.
        assert f"trial {row['trial']} started on " in out and f"trial {row['trial']} finished on tuner0 in " in out
        assert f"batch_size={row['batch_size']}" in out.split(f"trial {row['trial']} started on ")[1].splitlines()[0]
    assert "Trial 1 Complete" not in out and "Running Trial #" not in out  # keras-tuner's 1-based numbering.
    metrics = json.loads((workdir / "best_run" / "metrics.json").read_text())
    assert metrics["test_examples"] == 200 and result["test_accuracy"] == metrics["test_accuracy"]
    assert (workdir / "best_run" / "saved_model" / "saved_model.pb").exists()
    # One TensorBoard run per trial, named by its id, each with its whole config as HParams (batch size included,
    # as trials.csv has it); the experiment's columns: the searched hyper-parameters first, the fixed ones after.
    summaries = hparams_summaries(workdir / "tensorboard")
    searched = [*tune.SEARCH_SPACE, "batch_size"]
    assert summaries[""][0][:len(searched)] == searched
    assert set(summaries[""][0]) == set(TrainConfig.__dataclass_fields__)
    for row in rows:
        values = summaries[row["trial"]][1]
        assert set(values) == set(TrainConfig.__dataclass_fields__)
        assert values["batch_size"] == float(row["batch_size"]) and values["cell"] == row["cell"]


def test_a_search_drops_tensorflows_retracing_warning_and_nothing_else(tmp_path):
    """From a search's fifth trial on, TensorFlow warned that functions were "retraced" (each trial's model is new)
    and advised fixing a loop: inside the search that one warning is dropped, any other kept; outside, both."""
    import logging

    import keras
    import tensorflow as tf

    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    tf_logger = logging.getLogger("tensorflow")

    def retrace(fn):  # What a search does: a new tf.function per trial, each traced once.
        for i in range(6):
            tf.function(fn)(tf.constant(i))
        tf_logger.warning("another warning")

    class RetracesInATrial(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            retrace(lambda x: x + 1)

    tf_logger.addHandler(handler)
    try:
        tune.tune_and_evaluate(tune.TuneConfig(**TINY), tmp_path / "s", arrays=synthetic_arrays(),
                               extra_callbacks=[RetracesInATrial()])
        inside, logged[:] = list(logged), []
        retrace(lambda x: x + 2)  # Another function: TensorFlow's detector counts each function's traces apart.
    finally:
        tf_logger.removeHandler(handler)
    assert inside.count("another warning") == 2 and not any("retracing" in m for m in inside), inside
    assert any("triggered tf.function retracing" in m for m in logged) and "another warning" in logged, logged


def test_a_hyperband_search_says_why_it_ran_fewer_trials_than_max_trials(tmp_path, capsys):
    # Hyperband's brackets at max_epochs 1 hold one trial: asked for 3, the search ends after 1, and says why.
    settings = tune.TuneConfig(**{**TINY, "tuner": "hyperband", "epochs": 1, "max_trials": 3})
    result = tune.tune_and_evaluate(settings, tmp_path / "s", arrays=synthetic_arrays())
    out = capsys.readouterr().out
    assert result["finished_trials"] == 1
    assert "1 trial (all that hyperband's brackets hold at --epochs 1: 1 of --max-trials 3); best: trial " in out, out


def test_interrupted_search_resumes_without_rerunning_finished_trials(tmp_path):
    workdir, settings = tmp_path / "s", tune.TuneConfig(**TINY)
    CountFits.fits, CountFits.interrupt_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        tune.tune_and_evaluate(settings, workdir, arrays=synthetic_arrays(), extra_callbacks=[CountFits()])
    first = {t.trial_id: t.score for t in tune.make_tuner(settings, workdir, synthetic_arrays()).oracle.trials.values()
             if t.status == "COMPLETED"}
    assert len(first) == 1
    CountFits.fits, CountFits.interrupt_at = 0, None
    result = tune.tune_and_evaluate(settings, workdir, arrays=synthetic_arrays(), extra_callbacks=[CountFits()])
    assert CountFits.fits == 1 and result["finished_trials"] == 2  # Only the interrupted trial ran again.
    with (workdir / "trials.csv").open() as f:
        rows = {r["trial"]: float(r["val_accuracy"]) for r in csv.DictReader(f)}
    (trial_id, score), = first.items()
    assert rows[trial_id] == pytest.approx(score, abs=1e-4)  # The finished trial's result was kept.


def test_other_settings_are_refused_until_overwrite(tmp_path, capsys):
    workdir = tmp_path / "s"
    workdir.mkdir()
    (workdir / tune.TUNE_CONFIG_FILE).write_text(json.dumps(tune.TuneConfig(**TINY).to_dict()))
    other = tune.TuneConfig(**{**TINY, "max_trials": 5})
    with pytest.raises(ConfigError, match=r"other settings \(max_trials: 2 -> 5\).*--overwrite"):
        tune.check_workdir(other, workdir, overwrite=False)
    tune.check_workdir(other, workdir, overwrite=True)
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(workdir), "--max-trials", "5", "--tuner", "random", "--epochs", "2",
                   "--final-epochs", "1", "--early-stopping-patience", "1", "--validation-split", "0.2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--overwrite" in err


@pytest.mark.parametrize("argv, message", [
    (["--tuner", "grid"], "invalid choice: 'grid'"),
    (["--max-trials", "0"], "--max-trials 0: must be >= 1"),
    ([], "the following arguments are required: --workdir"),
])
def test_bad_flags(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        tune.main(argv + (["--workdir", str(tmp_path / "w")] if argv else []))
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1


def test_a_search_that_cannot_load_its_data_leaves_no_workdir(tmp_path, capsys, isolated_data_env, monkeypatch):
    from tf_rnn import mnist_files

    monkeypatch.setattr(mnist_files, "_download", lambda spec: (_ for _ in ()).throw(
        mnist_files.DataError("download failed: offline")))
    argv = ["--workdir", str(tmp_path / "s"), "--dataset", "fashion_mnist", "--tuner", "random"]
    with pytest.raises(SystemExit) as e:
        tune.main(argv)
    assert e.value.code == 1 and "fashion_mnist not found in" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # So the corrected command is not refused as "another search".


def test_no_finished_trial_is_a_run_error_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kt.Tuner, "search", lambda self, *a, **k: None)  # Every trial failed.
    monkeypatch.setattr(tune.datasets, "load_images", lambda *a, **k: synthetic_arrays())
    with pytest.raises(SystemExit) as e:
        tune.main(["--workdir", str(tmp_path / "s"), "--tuner", "random", "--max-trials", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "no trial of" in err and "finished" in err


@pytest.mark.slow
def test_search_killed_with_sigkill_resumes_through_the_cli(tmp_path, fashion_dir):
    import signal
    import subprocess
    import sys

    from support import kill_at_command

    # 600 training images (validation_split 0.99) keep each trial to seconds; the search is still real data.
    argv = ["--tuner", "random", "--max-trials", "2", "--epochs", "1", "--final-epochs", "1",
            "--validation-split", "0.99", "--dataset", "fashion_mnist", "--data-dir", str(fashion_dir),
            "--workdir", str(tmp_path / "s")]
    killed = subprocess.run(kill_at_command("tune", 2, argv), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL and "of fit 2" in killed.stdout, killed.stderr[-3000:]
    again = subprocess.run([sys.executable, "-m", "tf_rnn.tune", *argv], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trial 0 started" not in again.stdout and "trial 1 finished" in again.stdout  # Trial 0 was kept.
    with (tmp_path / "s" / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2
