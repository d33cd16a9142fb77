#!/usr/bin/env bash
# Build the documentation site offline into docs/_build/html from the
# notebooks (nbdev processing, then Sphinx with myst-nb and furo).
# MathJax comes from the npm package `mathjax`, plotly.js from the plotly
# package, so no page loads anything from another host.
# Usage: bash scripts/docs.sh    (run after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/python ]] || bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate

scratch=$PWD/.cache
export JUPYTER_CONFIG_DIR=${JUPYTER_CONFIG_DIR:-$scratch/jupyter/config} JUPYTER_DATA_DIR=${JUPYTER_DATA_DIR:-$scratch/jupyter/data}
export JUPYTER_RUNTIME_DIR=${JUPYTER_RUNTIME_DIR:-$scratch/jupyter/runtime} IPYTHONDIR=${IPYTHONDIR:-$scratch/ipython}

static=docs/_static
mkdir -p "$static"
mathjax=$scratch/npm/node_modules/mathjax/es5
if [[ ! -f $mathjax/tex-chtml.js ]] && command -v npm >/dev/null 2>&1; then
  npm install --prefix "$scratch/npm" mathjax@3 --no-audit --no-fund --silent >/dev/null 2>&1 || true
fi
if [[ -f $mathjax/tex-chtml.js ]]; then
  mkdir -p "$static/mathjax/output/chtml"
  cp "$mathjax/tex-chtml.js" "$static/mathjax/"
  cp -r "$mathjax/output/chtml/fonts" "$static/mathjax/output/chtml/"
else
  echo "docs: WARNING: npm package mathjax unavailable; formulas will show as TeX source"
fi
python - <<'PY'
import shutil
from pathlib import Path
import plotly

source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
shutil.copy(source, Path("docs/_static/plotly.min.js"))
PY

# Pages show the outputs of an executed copy of the notebooks. scripts/test.sh
# passes the copy its nbdev-test run saved (RC_NBKIT_EXECUTED_NBS); on its own
# this script runs nbdev-test --save on a fresh copy first.
executed=${RC_NBKIT_EXECUTED_NBS:-}
if [[ -z $executed ]]; then
  executed=$PWD/_executed_nbs
  rm -rf "$executed" && cp -r nbs "$executed"
  nbdev-test "$executed" --save --n-workers 2 || { echo "docs: a notebook failed; fix it before building the site"; exit 1; }
fi
python docs/prepare.py "$executed"
cp docs/conf.py docs/_src/conf.py
rm -rf docs/_src/_static docs/_src/_templates && cp -r "$static" docs/_src/_static && cp -r docs/_templates docs/_src/_templates
RC_NBKIT_DOCS_EXECUTE=off sphinx-build -q -W --keep-going -b html docs/_src docs/_build/html
echo "docs: site written to docs/_build/html/index.html"
