"""README.md and docs/*.md as the docs tests read them: fenced blocks, headings, links, stubs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->")
# A block whose first line names a file ("# src/pkg/mod.py", "# pyproject.toml (continued)") is
# a file of the plugin tutorial's package, written out by test_hooks_documented, not a program.
FILE_LINE = re.compile(r"# ([\w./-]+\.(?:py|toml))( \(continued\))?")


def pages() -> list[Path]:
    """README.md, then every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    """The 1-based line of the opening fence."""
    language: str
    code: str
    not_run: str | None
    """The reason given by a ``<!-- not run: reason -->`` line just before the block."""

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def file(self) -> str | None:
        """The path this block is a file of, for the tutorial's package blocks; else None."""
        match = FILE_LINE.fullmatch(self.code.split("\n", 1)[0])
        return match.group(1) if match else None


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language = lines[i][3:].strip().split(" ", 1)[0]
            start = i
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            assert i < len(lines), f"{page.name}:{start + 1}: a code block is never closed"
            before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            marker = NOT_RUN.fullmatch(before.strip())
            code = "\n".join(lines[start + 1 : i]) + "\n"
            found.append(
                Block(page, start + 1, language, code, marker.group(1) if marker else None)
            )
        i += 1
    return found


def prose(page: Path) -> str:
    """The page with the lines of its code blocks blanked (line numbers stay)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    inside = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            inside = not inside
            lines[i] = ""
        elif inside:
            lines[i] = ""
    return "\n".join(lines)


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (lower case, punctuation dropped)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page).splitlines():
        match = re.match(r"#{1,6} (.*)", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(page: Path) -> Iterator[tuple[int, str]]:
    """``(line, target)`` of every Markdown link and image in the page's prose."""
    text = prose(page)
    without_code = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)
    for match in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", without_code):
        yield without_code.count("\n", 0, match.start()) + 1, match.group(1)


def inline_code(page: Path) -> Iterator[tuple[int, str]]:
    """``(line, text)`` of every inline code span in the page's prose."""
    for number, line in enumerate(prose(page).splitlines(), 1):
        for match in re.finditer(r"`([^`]+)`", line):
            yield number, match.group(1)


def section(page: Path, heading: str) -> str:
    """The text under ``heading`` (e.g. ``"## Hooks"``) up to the next heading of its level."""
    text = page.read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"{page.name} has no '{heading}' section"
    level = heading.split(" ", 1)[0]
    body = text.split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n{level} ", body, maxsplit=1)[0]


def stubs(text: str) -> ast.Module:
    """The ``pyi`` blocks of ``text`` (the signature stubs), parsed as one module."""
    code = re.findall(r"```pyi\n(.*?)```", text, flags=re.S)
    return ast.parse("\n".join(code))
