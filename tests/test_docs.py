"""Every reference a comment makes to the specification resolves to a section of docs/architecture.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF = re.compile(r"(?:\bspec|docs/architecture\.md)[:,]?\s+((?:checklist\s+)?[A-HPS](?:\.\d+)*)\b")
HEADING = re.compile(r"^#{2,3} ([A-HPS](?:\.\d+)*)[. ]", re.M)


def _sources() -> list[Path]:
    """The project's Python files (no git needed: the tests also run from an unpacked source tree)."""
    folders = ("nsarm_core", "nsarm_cli", "scripts", "benchmarks", "examples", "tests")
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_spec_references_resolve_inside_the_repository() -> None:
    sections = set(HEADING.findall((ROOT / "docs" / "architecture.md").read_text()))
    assert {"A.6", "C.5", "E.3", "H", "P.2.1", "S.4"} <= sections
    unresolved = []
    for path in _sources():
        for match in REF.finditer(path.read_text()):
            ref = match.group(1).removeprefix("checklist").strip()
            parts = ref.split(".")
            # "C.3.3" is item 3 of section C.3; "H.12" item 12 of H: the longest heading prefix must exist
            if not any(".".join(parts[:n]) in sections for n in range(len(parts), 0, -1)):
                unresolved.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not unresolved, unresolved


def test_no_reference_points_outside_the_repository() -> None:
    outside = re.compile(r"shared/docs|protocols\.md|style\.md")
    hits = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if p.name != "test_docs.py" and outside.search(p.read_text())
    ]
    assert not hits, hits
