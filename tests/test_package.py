"""Package-level checks: the exported modules match the notebooks, and import is side-effect free."""
import filecmp
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _differing_files(left: Path, right: Path) -> list[str]:
    comparison = filecmp.dircmp(left, right, ignore=["__pycache__"])
    differing = []

    def walk(node, prefix=""):
        differing.extend(prefix + name for name in node.diff_files + node.left_only + node.right_only)
        for name, child in node.subdirs.items():
            walk(child, prefix + name + "/")

    walk(comparison)
    return sorted(differing)


def test_export_matches_modules(tmp_path):
    for name in ("nbs", "rc_nbkit"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    export = Path(sys.executable).with_name("nbdev-export")
    subprocess.run([str(export)], cwd=tmp_path, check=True, capture_output=True, timeout=300)

    stale = _differing_files(REPO / "rc_nbkit", tmp_path / "rc_nbkit")
    assert not stale, (
        f"rc_nbkit/ is out of date with nbs/ for: {', '.join(stale)}. "
        "Edit the notebook, then run `nbdev-export` and commit the exported module."
    )


def test_import_is_offline_and_cpu_only():
    modules = sorted(
        "rc_nbkit." + path.stem for path in (REPO / "rc_nbkit").glob("*.py") if not path.stem.startswith("_")
    )
    script = textwrap.dedent(
        f"""
        import socket, importlib

        def reject_connection(*args, **kwargs):
            raise AssertionError(f"network access during import: {{args}}")

        socket.socket.connect = reject_connection
        socket.create_connection = reject_connection
        for name in {modules!r}:
            importlib.import_module(name)
        import torch
        assert not torch.cuda.is_initialized(), "CUDA was initialised during import"
        print("ok", len({modules!r}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_readme_matches_index_notebook():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
