"""README and docs/: every relative link points to a file of the repository, and every ``#anchor``
to a heading (or an explicit ``<a id>``) of the file it names. README links into docs/results.md
section by section, so a renamed heading there would otherwise break the scorecard silently."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()  # a link: its text
    out = []
    for ch in text:
        if ch in " -":
            out.append("-")
        elif ch == "_" or unicodedata.category(ch)[0] in "LN":
            out.append(ch)
    return "".join(out)


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # a `# comment` in a code block is no heading
    found: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"^#{1,6} (.+)$", line)
        if m:
            base, n = slug(m.group(1)), 1
            name = base
            while name in found:  # GitHub numbers repeated headings: x, x-1, x-2
                name, n = f"{base}-{n}", n + 1
            found.add(name)
    found |= set(re.findall(r'<a id="([^"]+)"', text))
    return found


def test_slug_matches_githubs_rule() -> None:
    assert (
        slug("Stage 3 — alignment (`lasa align --method lasa|kto`)")
        == "stage-3--alignment-lasa-align---method-lasakto"
    )
    assert slug("`make run` on a fresh clone") == "make-run-on-a-fresh-clone"
    assert slug("Benchmarks (`make bench` → [`bench/RESULTS.md`](../bench/RESULTS.md))") == (
        "benchmarks-make-bench--benchresultsmd"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)
