"""The README and docs/ stay true: every link resolves, the models tables name exactly the
registered models, and the settings table names exactly the service's settings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from text2img.engines import registry
from text2img.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"^#{1,6} (.+)$", line)):
            found.add(slug(m.group(1)))
    return found


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def test_the_manual_exists_and_the_readme_is_short() -> None:
    names = {p.name for p in DOCS}
    assert {"models.md", "api.md", "deploy.md", "operations.md", "costs.md"} <= names
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_the_readme_links_every_page_of_the_manual() -> None:
    linked = {Path(t.split("#")[0]).name for t in local_links(ROOT / "README.md")}
    assert {p.name for p in DOCS} <= linked


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_local_link_resolves(page: Path) -> None:
    broken = []
    for target in local_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The rows of the first table whose header row starts with `header_start`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_the_models_table_lists_exactly_the_registered_models() -> None:
    rows = table_rows((ROOT / "docs/models.md").read_text(encoding="utf-8"), "| model |")
    named = {re.match(r"`([^`]+)`", row[0]).group(1) for row in rows}  # type: ignore[union-attr]
    assert named == set(registry.MODEL_NAMES)
    for row in rows:
        name = re.match(r"`([^`]+)`", row[0]).group(1)  # type: ignore[union-attr]
        spec = registry.get_spec(name)
        sizes = row[1]
        if not sizes.startswith("as `"):  # "as `sdxl-lightning`": the same spec's sizes
            assert spec.default_size in sizes, (name, sizes)
        assert ("(default)" in row[0]) == (name == registry.DEFAULT_MODEL), row[0]


def test_the_readme_names_only_registered_models() -> None:
    rows = table_rows((ROOT / "README.md").read_text(encoding="utf-8"), "| model |")
    named = {re.match(r"`([^`]+)`", row[0]).group(1) for row in rows}  # type: ignore[union-attr]
    downloadable = {n for n in registry.MODEL_NAMES if not registry.get_spec(n).random_weights}
    assert named == downloadable


def test_the_settings_table_names_exactly_the_service_settings() -> None:
    text = (ROOT / "docs/local.md").read_text(encoding="utf-8")
    rows = table_rows(text, "| variable |")
    documented = {v for row in rows for v in re.findall(r"`(TEXT2IMG_[A-Z0-9_]+)`", row[0])}
    fields = {f"TEXT2IMG_{name.upper()}" for name in Settings.model_fields}
    assert documented - fields == set(), "documented but not a setting"
    assert fields - documented == set(), "a setting nobody documented"
