"""Write README.md from nbs/index.ipynb, the docs home page, so the two never drift.

nbdev-readme does the same through Quarto, which is not always installed. Markdown cells are
copied as they are; code cells become fenced Python blocks, followed by their text output when
the notebook was saved with outputs. Run `python scripts/readme.py --check` to fail when
README.md is out of date instead of writing it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEADER = "<!-- Generated from nbs/index.ipynb by scripts/readme.py; edit the notebook, not this file. -->\n\n"


def render(notebook_path: Path) -> str:
    notebook = json.loads(notebook_path.read_text())
    blocks = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).strip()
        if not source:
            continue
        if cell["cell_type"] == "markdown":
            blocks.append(source)
        elif cell["cell_type"] == "code":
            lines = [line for line in source.splitlines() if not line.startswith("#|")]
            blocks.append("```python\n" + "\n".join(lines) + "\n```")
            text = "".join(
                "".join(output.get("text", "")) for output in cell.get("outputs", []) if output.get("output_type") == "stream"
            ).strip()
            if text:
                blocks.append("```\n" + text + "\n```")
    return HEADER + "\n\n".join(blocks) + "\n"


def main() -> int:
    expected = render(REPO / "nbs" / "index.ipynb")
    readme = REPO / "README.md"
    if "--check" in sys.argv[1:]:
        if not readme.exists() or readme.read_text() != expected:
            print("README.md is out of date with nbs/index.ipynb; run `python scripts/readme.py`", file=sys.stderr)
            return 1
        return 0
    readme.write_text(expected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
