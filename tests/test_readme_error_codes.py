"""The README and docs/ name only error codes that the service or the gateway really
answers, and the web page has Japanese words for each of them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "service" / "text2img"
CODE = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)*)`")


def readme_codes() -> dict[str, str]:
    """code -> the doc line naming it, from every table row that starts with a status
    (docs/api.md's "Errors" table, docs/operations.md's "Troubleshooting" table, ...)."""
    found: dict[str, str] = {}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [line for page in pages for line in page.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not re.match(r"^[1-5]\d\d\b", cells[0]):
            continue
        for cell in cells[:2]:
            for code in CODE.findall(cell):
                found.setdefault(code, line)
    return found


def source_literals() -> set[str]:
    """Every string literal in the service's, the gateway's and the engines' code."""
    literals: set[str] = set()
    for path in SOURCES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                literals.add(node.value)
    return literals


def test_every_error_code_the_readme_names_exists_in_the_code() -> None:
    codes = readme_codes()
    assert len(codes) >= 15, sorted(codes)  # the tables were found and parsed
    assert {"queue_full", "auth_throttled", "translation_failed", "start_failed"} <= set(codes)
    literals = source_literals()
    unknown = {code: line for code, line in codes.items() if code not in literals}
    assert not unknown, f"README names codes nothing answers: {unknown}"


def test_the_web_page_has_japanese_words_for_every_code() -> None:
    messages = (SOURCES / "api" / "static" / "messages.js").read_text(encoding="utf-8")
    table = messages[messages.index("const ERROR_TEXT") : messages.index("const STATUS_TEXT")]
    known = set(re.findall(r"^\s+([a-z_]+):", table, flags=re.MULTILINE))
    missing = set(readme_codes()) - known
    assert not missing, f"messages.js has no Japanese text for {sorted(missing)}"
