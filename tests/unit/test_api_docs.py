"""docs/api.md documents every route the control API serves, with each of its methods, and a curl example."""

from __future__ import annotations

import re
from pathlib import Path

from faultlab.api import create_app

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)  # /rules/{name:path} and /rules/{name} alike


def test_every_route_and_method_is_in_docs_api_md():
    app = create_app(object())  # type: ignore[arg-type]  # routes only; nothing is called
    routes = {(_shape(r.path), m) for r in app.app.routes for m in r.methods if m != "HEAD"}
    assert len(routes) >= 28  # every resource, /api/*, /events both ways, the three /ca paths
    text = DOC.read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| [`")]
    missing = []
    for path, method in sorted(routes):
        rows = [_shape(row) for row in table if f"{path}`" in _shape(row) or f"{path}," in _shape(row)]
        if not any(method in row for row in rows):
            missing.append(f"{method} {path}")
    assert missing == [], f"docs/api.md's endpoint table lacks: {', '.join(missing)}"
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    assert sections and all("curl " in s for s in sections), [s.splitlines()[0] for s in sections if "curl " not in s]
