"""docs/example.ipynb, executed headless (nbclient, a real Jupyter kernel) as a user opens it
from a clone's docs/ folder: it runs a study, reads the three frames, draws a seaborn figure
and writes the report. Kept in git without outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from suite import results

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "example.ipynb"


def test_the_notebook_is_kept_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_example_notebook_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a clone's layout in a temporary folder: the notebook in docs/, the studies beside it
    (tmp_path / "docs").mkdir()
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    monkeypatch.setenv("SUITE_OFFLINE", "1")  # the kernel inherits this environment
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path / "docs")}},
    )
    client.execute(env={**os.environ})  # raises CellExecutionError on any error

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    progress = [
        o["data"]["text/html"]
        for o in outputs
        if o.output_type in ("display_data", "update_display_data") and "text/html" in o["data"]
    ]
    assert any("6 finished, 0 skipped, 0 failed" in html for html in progress), progress[-3:]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the seaborn figure"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = results.runs("overfitting", uri=uri)
    assert len(runs) == 6 and runs["counted"].all()
    assert set(runs["train.epochs"]) == {30}
    assert (tmp_path / "reports" / "overfitting" / "index.html").is_file()


def test_a_script_without_a_main_guard_trains_in_its_own_process(
    tmp_path: Path, write_study: Callable[[str], Path], tiny_study: str
) -> None:
    """Worker processes import the main module: a script that calls `suite.run` at its top
    level would run again in each. It trains in its own process instead, and says why."""
    study = write_study(tiny_study)
    script = tmp_path / "script.py"
    script.write_text(
        "import suite\n"
        f"study = suite.load({str(study)!r}, set={{'train.epochs': 1}})\n"
        "result = suite.run(study, uri='sqlite:///s.db')\n"
        "print('result', result.ok, result.count('finished'))\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SUITE_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "result True 4" in done.stdout
    assert 'not under `if __name__ == "__main__":`' in done.stderr
    assert "training in this process" in done.stderr and "died" not in done.stdout + done.stderr
