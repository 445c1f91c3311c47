"""The guides' in-page links lead somewhere: every `](#anchor)` names a heading of the same file
(GitHub's rule: lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = ["docs/response-centre-guide.md", "README.md", "docs/engine.md", "SAFETY.md"]


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", GUIDES)
def test_every_in_page_link_names_a_heading(name: str) -> None:
    text = (ROOT / name).read_text(encoding="utf-8")
    headings = {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links - headings == set()


def test_the_slug_rule() -> None:
    assert slug("Events: at least once, ordered by (unit_id, seq)") == (
        "events-at-least-once-ordered-by-unit_id-seq"
    )
