"""Shared set-up for the browser tests: find Chromium, Node and playwright-core, start JupyterLab.

Everything stays on 127.0.0.1, and Jupyter and IPython write only under the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

BROWSER_DIR = Path(__file__).resolve().parent
REPO = BROWSER_DIR.parent.parent
CHROMIUM = "/usr/bin/chromium"


def missing_tools() -> str | None:
    "Return why the browser tests cannot run here, or None when Chromium, Node and playwright-core are present."
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found; install Debian's chromium (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node not found; install Node.js (apt-get install -y nodejs npm)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        return "playwright-core not installed; run `npm ci --prefix tests/browser`"
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def isolated_environment(home: Path) -> dict[str, str]:
    "Return os.environ with every Jupyter and IPython folder under `home`."
    environment = dict(os.environ)
    for name, folder in [
        ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("JUPYTER_DATA_DIR", "jupyter/data"),
        ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("IPYTHONDIR", "ipython"),
        ("JUPYTERLAB_SETTINGS_DIR", "jupyter/lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "jupyter/lab-workspaces"),
        ("MPLCONFIGDIR", "matplotlib"),
    ]:
        path = home / folder
        path.mkdir(parents=True, exist_ok=True)
        environment[name] = str(path)
    environment.setdefault("RC_NBKIT_CACHE", str(REPO / ".cache" / "rc_nbkit"))
    environment.setdefault("HF_HUB_OFFLINE", "1")
    environment.setdefault("TRANSFORMERS_OFFLINE", "1")
    # The notebook must pick the widget dashboard, as it does for a user in JupyterLab.
    environment.pop("RC_NBKIT_DASHBOARD", None)
    # No autosave: the notebook is a copy, but a save would still change its outputs mid-test.
    settings = home / "jupyter" / "lab-settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
    # No news notification: it would ask to contact jupyter.org.
    settings = home / "jupyter" / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return environment


@contextmanager
def jupyterlab(root: Path, home: Path, timeout_s: float = 120):
    "Start JupyterLab on 127.0.0.1 serving `root`; yield (base URL, token); stop it afterwards."
    port = free_port()
    token = secrets.token_hex(16)
    log = (home / "jupyterlab.log").open("w")
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
    ]
    process = subprocess.Popen(command, env=isolated_environment(home), stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {process.returncode}; see {home / 'jupyterlab.log'}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"JupyterLab did not answer on {base} within {timeout_s} s; see {home / 'jupyterlab.log'}")
            time.sleep(0.5)
        yield base, token
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


ARTIFACTS = REPO / ".cache" / "browser-tests"  # screenshots and results of the latest run, kept for inspection and CI


def keep_artifacts(home: Path, name: str) -> Path:
    "Copy the screenshots and result JSON of a test run from `home` to .cache/browser-tests/NAME and return that folder."
    target = ARTIFACTS / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in list(home.glob("*.png")) + list(home.glob("*.json")) + list(home.glob("*.log")):
        shutil.copy(path, target / path.name)
    return target


def run_node(script: str, config: dict, home: Path, timeout_s: float) -> dict:
    "Run a Node script of tests/browser with `config` and return the result JSON it wrote."
    config_path = home / f"{Path(script).stem}-config.json"
    config_path.write_text(json.dumps(config))
    environment = dict(os.environ, HOME=str(home))
    completed = subprocess.run(
        ["node", str(BROWSER_DIR / script), str(config_path)], cwd=BROWSER_DIR, env=environment,
        capture_output=True, text=True, timeout=timeout_s,
    )
    result_path = Path(config["result"])
    if not result_path.exists():
        raise RuntimeError(f"{script} wrote no result (exit code {completed.returncode}):\n{completed.stdout}\n{completed.stderr}")
    return json.loads(result_path.read_text())
