"""notebooks/walkthrough.ipynb: executes top to bottom on a tiny budget, and is committed without outputs."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    # It imports from tf_rnn instead of copying its code.
    assert any("from tf_rnn" in c.source for c in code)
    assert not any("class StackedRNN" in c.source or "def load(" in c.source for c in code)


@pytest.mark.slow
def test_notebook_executes(fashion_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WALKTHROUGH_EPOCHS", "1")
    monkeypatch.setenv("WALKTHROUGH_TRAIN_IMAGES", "3000")
    monkeypatch.setenv("WALKTHROUGH_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    streams = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "stream"]
    text = "".join(o.text for o in streams)
    # Quiet for a newcomer: no TensorFlow logging (C++ start-up lines, "INFO:tensorflow:"), no Python warnings.
    assert [o.text for o in streams if o.name == "stderr"] == [] and "INFO:" not in text, text
    assert "test accuracy of the reloaded SavedModel on all 10000 test images" in text
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
    # Step by step, LiteRT and ONNX each agree with the SavedModel (CI installs the export extra).
    gaps = dict(re.findall(r"^(step by step|LiteRT|ONNX)\b.*largest difference from \S+ .*?([-+.e\d]+)$", text, re.M))
    assert set(gaps) == {"step by step", "LiteRT", "ONNX"}, text
    assert all(float(gap) < 1e-5 for gap in gaps.values()), gaps
    assert (tmp_path / "deploy" / "model.tflite").exists() and (tmp_path / "deploy" / "model.onnx").exists()
    assert any(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*")))
