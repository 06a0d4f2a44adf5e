"""notebooks/walkthrough.ipynb: executes top to bottom on a tiny budget, and is committed without outputs."""

import os
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
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "test accuracy of the reloaded SavedModel on all 10000 test images" in text
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
    assert any(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*")))
