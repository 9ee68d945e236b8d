"""Every relative link in README.md and docs/*.md leads to a file of the repository (and a ``#fragment`` to a
heading of that file), so a reader never follows a link into nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", _FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_FENCE.sub("", page.read_text(encoding="utf-8")))]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` that lead to no file under ``root`` (or to no heading of it)."""
    broken = []
    for link in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("<"):
            continue  # http:, https:, mailto: ...
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or root not in target.parents:
            broken.append(f"{link}: no such file in the repository")
        elif fragment and target.suffix == ".md" and fragment not in _anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{link}: no heading #{fragment} in {target.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "a.md"
    (tmp_path / "docs" / "b.md").write_text("# B page\n\n## 2. The step\n")
    page.write_text("[ok](b.md#2-the-step) [web](https://example.com) [gone](../../shared/x.md) "
                    "[no heading](b.md#nothing)\n```\n[in code](missing.md)\n```\n")
    assert broken_links(page, tmp_path) == ["../../shared/x.md: no such file in the repository",
                                             "b.md#nothing: no heading #nothing in b.md"]


def test_the_docs_are_found():
    assert len(PAGES) > 5 and (ROOT / "docs" / "integrating-your-app.md") in PAGES
