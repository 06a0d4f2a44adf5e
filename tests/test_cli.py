"""Every entry point maps errors the same way: bad flag or config value → 2, run or data error → 1, Ctrl-C → 130,
each as one line and never a traceback; and --config values are type-checked against the dataclass."""

import json
import re
import sys

import keras
import pytest

from legacy_port import mnist_lstm
from tf_rnn import cli, convert_tf1, export, predict, train, tune


def entry_points(tmp_path, monkeypatch):
    """name → (main, module, function to make fail, argv that reaches that function)."""
    # export reads the model first (any failure there is the user's file: a run error, tested in test_export).
    monkeypatch.setattr(keras.saving, "load_model", lambda path: object())
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "m.keras").write_bytes(b"")
    return {
        "train": (train.main, train, "train_and_evaluate", ["--workdir", str(tmp_path / "w")]),
        "tune": (tune.main, tune, "tune_and_evaluate", ["--workdir", str(tmp_path / "w")]),
        "export": (export.main, export, "export_saved_model", [str(tmp_path / "m.keras"), "--out", str(tmp_path / "o")]),
        "predict": (predict.main, predict, "read_images", [str(tmp_path / "sm"), str(tmp_path / "x.npy")]),
        "convert_tf1": (convert_tf1.main, convert_tf1, "convert", [str(tmp_path), "--out", str(tmp_path / "c.keras")]),
        "legacy_port": (mnist_lstm.main, mnist_lstm, "read_data_sets", ["--workdir", str(tmp_path / "w")]),
    }


NAMES = ["train", "tune", "export", "predict", "convert_tf1", "legacy_port"]


def raiser(exc):
    def f(*args, **kwargs):
        raise exc

    return f


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("exc, code, text", [
    (cli.RunError("the data file /d/x is corrupt; delete it"), 1, "the data file /d/x is corrupt; delete it"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (ValueError("odd\nsecond line"), 1, r"unexpected ValueError: odd"),
    (cli.UsageError("--units 'abc': must be a int"), 2, "--units 'abc': must be a int"),
])
def test_errors_map_to_exit_codes_with_one_line(name, exc, code, text, tmp_path, monkeypatch, capsys):
    main, module, function, argv = entry_points(tmp_path, monkeypatch)[name]
    monkeypatch.setattr(module, function, raiser(exc))
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == code, err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(text, err), err


@pytest.mark.parametrize("name", NAMES)
def test_bad_flag_exits_2_with_one_line(name, tmp_path, monkeypatch, capsys):
    main, _, _, argv = entry_points(tmp_path, monkeypatch)[name]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "unrecognized arguments: --bogus" in err


def test_traceback_on_request(tmp_path, monkeypatch):
    main, module, function, argv = entry_points(tmp_path, monkeypatch)["train"]
    monkeypatch.setattr(module, function, raiser(ValueError("a bug")))
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="a bug"):
        main(argv)


def test_train_run_error_and_ctrl_c_name_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "train_and_evaluate", raiser(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as e:
        train.main(["--workdir", str(tmp_path / "w")])
    assert e.value.code == 130 and "re-run the same command to resume" in capsys.readouterr().err


@pytest.mark.parametrize("values, message", [
    ({"units": "abc"}, r"--units 'abc': must be an integer, not str"),
    ({"units": 8.5}, r"--units 8.5: must be an integer, not float"),
    ({"units": True}, r"--units True: must be an integer, not bool"),
    ({"lr": "0.1"}, r"--lr '0.1': must be a number, not str"),
    ({"cell": 3}, r"--cell 3: must be a string, not int"),
    ({"epochs": None}, r"--epochs None: must be set"),
])
def test_config_file_values_are_type_checked(values, message, tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(values))
    with pytest.raises(SystemExit) as e:
        train.main(["--config", str(path), "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "w").exists()


def test_config_file_ints_for_floats_and_nulls_for_optionals_are_fine(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 1, "steps": None, "data_dir": None}))
    config, _ = train.parse_flags(["--config", str(path)])
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.steps is None


def test_tune_config_is_type_checked_too():
    with pytest.raises(cli.UsageError, match="--max-trials '3': must be an integer"):
        tune.TuneConfig(max_trials="3")


def test_the_error_line_names_the_command_as_the_user_ran_it(monkeypatch, capsys):
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=types.SimpleNamespace(name="tf_rnn.tune")))
    assert cli.prog_name() == "python -m tf_rnn.tune"
    monkeypatch.setitem(sys.modules, "__main__", types.SimpleNamespace(__spec__=None))
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/tf-rnn-train", "--units", "0"])
    assert cli.prog_name() == "tf-rnn-train"
    monkeypatch.setattr(sys, "argv", [""])
    assert cli.prog_name() == "tf_rnn"
    with pytest.raises(SystemExit) as e:
        cli.fail("first line\nsecond line", cli.RUN)
    assert e.value.code == 1 and capsys.readouterr().err == "tf_rnn: error: first line\n"
    with pytest.raises(SystemExit) as e:
        cli.fail("  ")
    assert e.value.code == 2 and capsys.readouterr().err == "tf_rnn: error: unknown error\n"


# A CLI whose output goes on and on (predict over a whole IDX file), or one that meets a broken pipe of its own.
ENDLESS = """
import sys
import time
from tf_rnn import cli

@cli.entry_point()
def main(argv):
    if sys.argv[1] == "other":
        raise BrokenPipeError(32, "Broken pipe (a worker's socket)")
    if sys.argv[1] == "short":  # All its output fits the buffer; the reader has left before it is flushed.
        print("example[0]\t3 (Dress)")
        while not cli._stdout_reader_gone():
            time.sleep(0.01)
        return 0
    for i in range(10**7):
        print(f"example[{i}]\\t3 (Dress)")

main()
"""


def test_output_cut_short_by_a_closed_pipe_ends_quietly_but_another_broken_pipe_is_an_error():
    import os
    import subprocess

    # stdout block-buffered, as a user's is into a pipe (some CI sets PYTHONUNBUFFERED): lines wait in the buffer.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    # `python -m tf_rnn.predict model.tflite t10k-images.gz | head -2`: the reader leaves after two lines.
    with subprocess.Popen([sys.executable, "-c", ENDLESS, "stdout"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        assert proc.stdout.readline().startswith(b"example[0]")
        proc.stdout.close()
        err = proc.stderr.read().decode()
    assert (proc.returncode, err) == (cli.PIPE_CLOSED, ""), err  # No "error:", no "Exception ignored".
    # `predict one.png | head -0`: the pipe closes before the line, still in the buffer, is written.
    with subprocess.Popen([sys.executable, "-c", ENDLESS, "short"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        proc.stdout.close()
        err = proc.stderr.read().decode()
    assert (proc.wait(timeout=120), err) == (cli.PIPE_CLOSED, ""), err
    other = subprocess.run([sys.executable, "-c", ENDLESS, "other"], capture_output=True, text=True, timeout=120,
                           env=env)
    assert other.returncode == cli.RUN and other.stdout == "", other.stderr
    assert other.stderr.count("\n") == 1 and "unexpected BrokenPipeError" in other.stderr, other.stderr


def test_only_a_pipe_whose_reader_closed_counts_as_stdout_gone(tmp_path, monkeypatch):
    import io
    import os

    read_end, write_end = os.pipe()
    with open(write_end, "w") as pipe:
        monkeypatch.setattr(sys, "stdout", pipe)
        assert not cli._stdout_reader_gone()  # A reader is still there.
        os.set_blocking(write_end, False)
        with pytest.raises(BlockingIOError):  # ... reading slowly (`| less`): the pipe is full. Asking must not wait.
            while True:
                os.write(write_end, b"x" * 65536)
        assert not cli._stdout_reader_gone()
        os.close(read_end)
        assert cli._stdout_reader_gone()
    with open(tmp_path / "out.txt", "w") as file:  # A file, a terminal or a closed stream is never "gone".
        monkeypatch.setattr(sys, "stdout", file)
        assert not cli._stdout_reader_gone()
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # No file descriptor (a notebook, capsys).
    assert not cli._stdout_reader_gone()
    monkeypatch.setattr(sys, "stdout", file)  # Closed: fileno() raises ValueError.
    assert not cli._stdout_reader_gone()


def test_help_gives_each_flags_default_but_never_none():
    """`--help`'s "(default: X)" for every flag of a field with a default; an optional field (default None) shows
    none, not "(default: None)" (mutmut: no test read the help text)."""
    import argparse
    import dataclasses

    from tf_rnn import config as config_lib

    for cls in (config_lib.TrainConfig, tune.TuneConfig):
        parser = argparse.ArgumentParser()
        config_lib.add_dataclass_flags(parser, cls)
        helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
        assert set(helps) == {f.name for f in dataclasses.fields(cls)}  # Every field is a flag.
        for f in dataclasses.fields(cls):
            assert helps[f.name].endswith(f" (default: {f.default})") == (f.default is not None), helps[f.name]
            assert helps[f.name].strip() and (f.default is not None or helps[f.name] == f.metadata["help"])
