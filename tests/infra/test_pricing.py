"""infra/pricing.py is the one price table: the cost tables of docs/costs.md, the README's
summary and the stack's cost outputs all come from it."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import yaml
from infra_harness import PROJECT_FILE, ROOT, Plan

from infra import pricing

README = ROOT / "README.md"
COSTS = ROOT / "docs" / "costs.md"
PlanFor = Callable[..., Plan]


def costs_section() -> str:
    text = COSTS.read_text()
    return text.split("<!-- section:costs -->", 1)[1].split("<!-- /section:costs -->", 1)[0]


def generated_block() -> str:
    section = costs_section()
    return section.split("<!-- pricing:begin -->\n", 1)[1].split("<!-- pricing:end -->", 1)[0]


def test_readme_cost_tables_are_the_price_table() -> None:
    assert generated_block() == pricing.readme_tables(), (
        "docs/costs.md differs from infra/pricing.py: paste `python -m infra.pricing` "
        "between the pricing markers"
    )


def test_the_readme_summary_quotes_the_table() -> None:
    """The README's short cost tables are rows of the generated ones, word for word."""
    readme = README.read_text()
    section = readme.split("## Costs", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    assert any(row.startswith("| **total** |") for row in rows), rows
    assert any(row.startswith("| boot disk") for row in rows), rows
    generated = pricing.readme_tables().splitlines()
    for row in rows:
        assert row in generated, f"README cost row not in infra/pricing.py's tables: {row}"
    example = next(line for line in generated if line.startswith("Example:"))
    for amount in re.findall(r"\*\*\$\d+/month\*\*", example):
        assert amount in " ".join(section.split()), amount


def test_readme_prose_quotes_the_table() -> None:
    section = " ".join(costs_section().split())
    tokyo = pricing.PD_BALANCED_GB_MONTH["asia-northeast1"]
    assert f"${tokyo:.3f}/GB-month in Tokyo" in section
    assert tokyo == pytest.approx(0.130)  # Billing Catalog "Balanced PD Capacity in Japan"
    assert f"${pricing.PD_BALANCED_GB_MONTH['us-central1']:.2f} in Iowa" in section
    # "about a third ... in Tokyo but closer to two fifths in Iowa"
    assert "about a third of the on-demand price in Tokyo" in section
    assert 0.28 <= pricing.spot_share("asia-northeast1") <= 0.38
    assert "two fifths in Iowa" in section
    assert 0.37 <= pricing.spot_share("us-central1") <= 0.45
    assert pricing.SPOT_SNAPSHOT_DATE in section


def test_no_unqualified_one_third_spot_claim() -> None:
    """Spot is ~1/3 of the price only in some regions: nobody may say so flatly."""
    spot = yaml.safe_load(PROJECT_FILE.read_text())["config"]["spot"]["description"]
    for text in (README.read_text(), COSTS.read_text(), spot):
        for claim in re.findall(r"[^\n]*(?:1/3|a third) of the price[^\n]*", text):
            assert "Tokyo" in claim, claim


def test_cost_outputs_match_the_readme(plan_for: PlanFor) -> None:
    block = generated_block()
    totals = re.search(r"^\| \*\*total\*\* \|(.*)\|$", block, flags=re.MULTILINE)
    assert totals is not None
    shown = [float(v) for v in re.findall(r"\$([0-9.]+)", totals.group(1))]
    outputs = [
        plan_for(**config).outputs["hourly_cost_estimate"]
        for config in (
            {},
            {"spot": True},
            {"region": "us-central1", "zone": "us-central1-a"},
            {"region": "us-central1", "zone": "us-central1-a", "spot": True},
        )
    ]
    assert shown == [round(o, 2) for o in outputs]
    asleep = plan_for().outputs["monthly_asleep_cost_estimate"]
    assert f"+ ${asleep:.2f} ≈" in block
    assert plan_for(flowLogs=False).outputs["monthly_asleep_cost_estimate"] == 13.0


def test_disk_price_outside_the_table_is_the_higher_known_one() -> None:
    assert pricing.disk_gb_month("europe-west4") == max(pricing.PD_BALANCED_GB_MONTH.values())
