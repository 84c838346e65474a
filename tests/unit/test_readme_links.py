"""Every relative link and picture in the project's documents points to a file in the repository (one git
tracks, where this is a git checkout), and every anchor (``#section``) to a heading of its document.

The documents: README.md, deploy/README.md and docs/**/*.md. Links inside code (fenced blocks, `inline`)
are not links; addresses with a scheme (https:, mailto:) are not checked here."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
DOCS = sorted({ROOT / "README.md", ROOT / "deploy" / "README.md", *(ROOT / "docs").rglob("*.md")})

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
HTML = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href|srcset)=\"([^\"]+)\"", re.I)
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The text without its code: fenced blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def targets(text: str) -> list[str]:
    body = prose(text)
    return [m.group(1) for pattern in (LINK, REFERENCE, HTML) for m in pattern.finditer(body)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation but hyphens and underscores
    removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", text)):
        s = slug(m.group(1))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


@cache
def tracked() -> frozenset[str] | None:
    """The files git tracks (staged ones included), or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(p for p in out.split("\0") if p)


def problems(doc: Path, text: str, root: Path = ROOT, files: frozenset[str] | None = None) -> list[str]:
    """What is wrong with the relative links of ``doc`` (its ``text``): each a line saying which and why."""
    out = []
    for target in targets(text):
        if SCHEME.match(target) or target.startswith("//"):
            continue
        path, _, fragment = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        try:
            rel = dest.relative_to(root.resolve()).as_posix()
        except ValueError:
            out.append(f"{doc.name}: {target}: outside the repository")
            continue
        if path:
            if not dest.exists():
                out.append(f"{doc.name}: {target}: no such file")
                continue
            if files is not None and dest.is_file() and rel not in files:
                out.append(f"{doc.name}: {target}: not in git (git add it)")
                continue
        if fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            out.append(f"{doc.name}: {target}: no heading with that anchor")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_picture_points_to_a_file_in_the_repository(doc):
    assert problems(doc, doc.read_text(), files=tracked()) == []


def test_the_readme_shows_pictures_and_links_files():
    # the test above would pass on a README whose links the patterns missed: they find these
    found = targets((ROOT / "README.md").read_text())
    assert "docs/figures/availability.png" in found
    assert "docs/figures/webapp-phone.png" in found  # an <img src=...>
    assert "SECURITY.md" in found


# One rule, one row: what the checker finds in a small document beside real files.
ROWS = [
    ("![a](docs/figures/push.png)", []),
    ("![missing](docs/figures/nothing.png)", ["no such file"]),
    ('<img src="docs/figures/nope.png" alt="x">', ["no such file"]),
    ("[ref]: docs/nowhere.md", ["no such file"]),
    ("[ok](https://example.org/x.png) [mail](mailto:a@b.c)", []),  # not relative: not checked here
    ("```sh\n![in code](docs/none.png)\n```", []),  # code is not a link
    ("`![inline code](docs/none.png)`", []),
    ("[up](../../etc/passwd)", ["outside the repository"]),
    ("## Measured\n[here](#measured)", []),
    ("## Measured\n[here](#not-a-heading)", ["no heading with that anchor"]),
    ("[there](docs/design/redis-cluster.md#no-such-section)", ["no heading with that anchor"]),
    ("[untracked](docs/figures/push.png)", ["not in git"]),  # with a git listing that lacks it
]


@pytest.mark.parametrize(("text", "want"), ROWS)
def test_the_checker_finds_each_kind_of_broken_link(text, want):
    files = frozenset() if "untracked" in text else None
    found = problems(ROOT / "README.md", text, files=files)
    assert len(found) == len(want), found
    for line, reason in zip(found, want):
        assert reason in line


def test_anchors_follow_githubs_slugs():
    text = "# fencex\n## What fencex does\n## A farmer's first five minutes\n## `./dev` and *more*\n## Tests\n## Tests"
    assert anchors(text) == {
        "fencex",
        "what-fencex-does",
        "a-farmers-first-five-minutes",
        "dev-and-more",
        "tests",
        "tests-1",
    }
