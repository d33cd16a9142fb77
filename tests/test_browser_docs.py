"""Load the built documentation site in headless Chromium and check that its plots render offline.

The site is served from docs/_build/html (built by `bash scripts/docs.sh`) on 127.0.0.1; every
request to another host is blocked and counted. Each page that contains plotly figures must load
plotly.js from the site itself and draw every figure. Screenshots go to .cache/browser-tests/docs/.
"""
import functools
import http.server
import os
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "browser"))
import support  # noqa: E402

# RC_NBKIT_DOCS_SITE points the test at a site built elsewhere.
SITE = Path(os.environ.get("RC_NBKIT_DOCS_SITE", support.REPO / "docs" / "_build" / "html"))
# Pages that must show figures: the dashboard chapter (a replayed run) and the geometry tutorial.
REQUIRED_PAGES = ["13_dashboard.html", "tutorials/02_geometry.html"]


def _site_missing() -> str | None:
    if not (SITE / "index.html").exists():
        return f"{SITE} not built; run `bash scripts/docs.sh` first"
    return None


pytestmark = [
    pytest.mark.skipif(support.missing_tools() is not None, reason=str(support.missing_tools())),
    pytest.mark.skipif(_site_missing() is not None, reason=str(_site_missing())),
]


def pages_with_figures() -> list[str]:
    pages = []
    for page in sorted(SITE.rglob("*.html")):
        if "_static" in page.parts or "_modules" in page.parts or "_sources" in page.parts:
            continue
        if "plotly-graph-div" in page.read_text(errors="replace"):
            pages.append(page.relative_to(SITE).as_posix())
    return pages


@pytest.fixture(scope="module")
def site_check(tmp_path_factory):
    home = tmp_path_factory.mktemp("browser-docs")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pages = sorted(set(pages_with_figures()) | {page for page in REQUIRED_PAGES if (SITE / page).exists()} | {"index.html"})
    config = {
        "baseUrl": f"http://127.0.0.1:{server.server_address[1]}/",
        "pages": pages,
        "screenshotDir": str(home),
        "result": str(home / "result.json"),
        "userDataDir": str(home / "chromium-profile"),
        "timeoutMs": 60_000,
    }
    try:
        result = support.run_node("check_docs.mjs", config, home, timeout_s=300)
    finally:
        server.shutdown()
        server.server_close()
    print(f"docs screenshots in {support.keep_artifacts(home, 'docs')}")
    return result


def test_site_pages_load(site_check):
    assert site_check["errors"] == []
    for name, page in site_check["pages"].items():
        assert page["status"] == 200, name


def test_site_needs_no_other_host(site_check):
    assert site_check["external"] == []


def test_required_pages_have_figures():
    missing = [page for page in REQUIRED_PAGES if not (SITE / page).exists()]
    assert missing == [], f"pages missing from the site: {missing}; rebuild it with `bash scripts/docs.sh`"


def test_site_plots_render(site_check):
    pages = {name: page for name, page in site_check["pages"].items() if page["figures"]}
    assert set(REQUIRED_PAGES) <= set(pages), sorted(pages)
    for name, page in pages.items():
        assert page["plotlyLoaded"], f"{name}: plotly.js did not load"
        assert page["errors"] == [], f"{name}: {page['errors']}"
        for figure in page["figures"]:
            assert figure["traces"] >= 1, f"{name}: figure {figure['id']} has no data"
            assert figure["svg"] >= 1, f"{name}: figure {figure['id']} was not drawn"
