"""Sphinx configuration for the offline documentation site (myst-nb + furo)."""
import os
from pathlib import Path

import rc_nbkit

project = "rc_nbkit"
release = rc_nbkit.__version__
author = "rc_nbkit developers"

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "sphinx.ext.viewcode"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]

# scripts/docs.sh passes notebooks that nbdev-test already executed and sets
# RC_NBKIT_DOCS_EXECUTE=off; a plain sphinx-build executes them here. Either way a
# cell error fails the build, so a broken page cannot be published.
nb_execution_mode = os.environ.get("RC_NBKIT_DOCS_EXECUTE", "force")
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_render_markdown_format = "myst"
nb_merge_streams = True

html_theme = "furo"
html_title = f"rc_nbkit {release}"
html_static_path = ["_static"]

# MathJax comes from the npm package copied into _static by scripts/docs.sh, not from a CDN.
mathjax_path = "mathjax/tex-chtml.js"
# Plotly figures load plotly.js from _static (copied from the plotly package), not from a CDN;
# _templates/base.html puts it in the page head.
templates_path = ["_templates"]

# The site shows dashboards as static plotly HTML: the kernel that ran the notebooks cannot serve
# live widgets to a static page, and no widget manager is loaded from a CDN.
os.environ.setdefault("RC_NBKIT_DASHBOARD", "static")
nb_ipywidgets_js = {}

autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "description"
suppress_warnings = ["mystnb.unknown_mime_type", "myst.header"]
