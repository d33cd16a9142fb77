"""Run the quick-start tutorial in JupyterLab, in headless Chromium, and check the live dashboard.

The test starts JupyterLab on 127.0.0.1 with a token and opens a copy of
nbs/tutorials/01_quick_start.ipynb. It runs the cells up to the one that waits for training, so
the kernel is idle and the buttons work. It checks that the dashboard's plots and controls are in
the page and change as steps arrive, pauses and resumes the trainer from the page, and runs the
rest of the notebook. Screenshots and the observations go to .cache/browser-tests/notebook/.
It needs Debian's chromium, Node.js and playwright-core (`npm ci --prefix tests/browser`), and
trains the demo pair for a few steps on CPU, so it is marked slow.
"""
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "browser"))
import support  # noqa: E402

NOTEBOOK = support.REPO / "nbs" / "tutorials" / "01_quick_start.ipynb"
WAIT_MARKER = "# Wait for training to end"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(support.missing_tools() is not None, reason=str(support.missing_tools())),
]


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-notebook")
    root = home / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    config = {
        "waitMarker": WAIT_MARKER,
        "screenshot": str(home / "quick_start.png"),
        "result": str(home / "result.json"),
        "userDataDir": str(home / "chromium-profile"),
        "timeoutMs": 12 * 60 * 1000,
        "pauseCheckMs": 8000,
    }
    with support.jupyterlab(root, home) as (base, token):
        config["url"] = f"{base}/lab/tree/{NOTEBOOK.name}?token={token}"
        result = support.run_node("run_notebook.mjs", config, home, timeout_s=14 * 60)
    artifacts = support.keep_artifacts(home, "notebook")
    print(f"browser test screenshots and result in {artifacts}")
    return result, artifacts


def test_notebook_runs_in_browser(notebook_run):
    result, home = notebook_run
    assert result["errors"] == [], "\n".join(result["errors"]) + f"\n(see {home})"
    code_cells = [cell for cell in result["cells"] if cell["type"] == "code" and not cell["slow"]]
    assert all(cell["executionCount"] is not None for cell in code_cells), code_cells
    assert [cell["errors"] for cell in code_cells if cell["errors"]] == []
    assert (home / "quick_start.png").stat().st_size > 10_000


def test_dashboard_plots_in_page(notebook_run):
    result, _ = notebook_run
    final = result["final"]
    assert set(final["figures"]) == {"angles", "angle-history", "curriculum", "losses", "training"}
    for name, figure in final["figures"].items():
        assert figure["svg"] >= 1, f"{name} is not drawn"
        assert figure["traces"] >= 1, f"{name} has no traces"
    assert final["figures"]["angles"]["heatmap"], "the heatmap has no values"


def test_dashboard_updates_as_steps_arrive(notebook_run):
    result, _ = notebook_run
    first, later = result["first"], result["later"]
    step = lambda observation: int(observation["status"].split("step ")[1].split()[0])
    assert step(later) > step(first)
    assert later["figures"]["losses"]["points"] > first["figures"]["losses"]["points"]
    assert later["figures"]["angles"]["heatmap"] != first["figures"]["angles"]["heatmap"]
    assert "finished" in result["final"]["status"]


def test_pause_and_resume_from_page(notebook_run):
    result, _ = notebook_run
    pause = result["pause"]
    assert "paused" in pause["paused"]["status"]
    assert pause["before"] == pause["after"], "steps went on while paused"
    assert result["resumed"]["step"] > pause["after"]
    assert result["resumed"]["label"] == "Pause"
    assert result["final"]["pauseDisabled"] is True
    assert result["final"]["stopDisabled"] is True
