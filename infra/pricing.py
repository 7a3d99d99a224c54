"""The price table: the one source of the cost outputs and of the cost tables (docs, README).

USD list prices without discounts. VM and GPU hourly prices, on-demand and Spot, are from
the SkyPilot catalog v8 @006059e0 (generated from Google's billing catalog), copied on
SPOT_SNAPSHOT_DATE; Spot prices "can change up to once every day" (cloud.google.com/
spot-vms/pricing), so the Spot figures are a dated snapshot, not a promise. pd-balanced:
$0.10 per GiB-month in us-central1, $0.130 in asia-northeast1 (Billing Catalog SKU
"Balanced PD Capacity in Japan", effective 2026-09-26; docs/gcp-facts.md §3, §11). Cloud
NAT from cloud.google.com/nat/pricing. Estimates only: the billing console or
https://cloud.google.com/products/calculator has today's prices.

`python -m infra.pricing` prints the tables of docs/costs.md, and
tests/infra/test_pricing.py fails when the docs and this table disagree.
"""

from __future__ import annotations

import re
from typing import Any

from infra.config import Settings

SPOT_SNAPSHOT_DATE = "2026-11-25"
PRICE_TABLE_DATE = f"Spot snapshot {SPOT_SNAPSHOT_DATE}; pd-balanced Tokyo effective 2026-09-26"
PRICE_TABLE_SOURCE = (
    "SkyPilot catalog v8 @006059e0 (GCP billing catalog); Billing Catalog "
    "'Balanced PD Capacity in Japan'; cloud.google.com/nat/pricing"
)

# (region, on-demand, spot) USD per hour
N1_STANDARD_4 = {"us-central1": (0.19000, 0.05223), "asia-northeast1": (0.24376, 0.06662)}
GPU_PER_HOUR = {
    ("nvidia-tesla-t4", "us-central1"): (0.35, 0.175),
    ("nvidia-tesla-t4", "asia-northeast1"): (0.37, 0.1311),
}
PD_BALANCED_GB_MONTH = {"us-central1": 0.10, "asia-northeast1": 0.130}
PD_BALANCED_UNKNOWN_REGION = 0.13  # the higher of the two known prices
NAT_PER_VM_HOUR = 0.0014
NAT_IP_PER_HOUR = 0.005  # the NAT's auto-allocated address, while it is in use
HOURS_PER_MONTH = 730
# VPC flow logs (network/flow-logs settings): billed per GiB of logs; with 10-minute
# aggregation, half sampling and no metadata a personal VM's few flows make some MiB a
# month. The volume is an estimate, not a measurement.
LOG_PRICE_PER_GIB = 0.50
FLOW_LOG_GIB_PER_MONTH_ESTIMATE = 0.02
# the README's example: default shape, 100 GB disk, two hours of use a day
README_REGIONS = ("asia-northeast1", "us-central1")
README_DISK_GB = 100
README_HOURS_PER_MONTH = 60


def machine_per_hour(settings: Settings) -> float | None:
    """n1-standard-N scales linearly from n1-standard-4; other shapes are not in the table."""
    match = re.match(r"^n1-standard-([0-9]+)$", settings.machine_type)
    prices = N1_STANDARD_4.get(settings.region)
    if not match or prices is None:
        return None
    return prices[1 if settings.spot else 0] * int(match.group(1)) / 4


def gpu_per_hour(settings: Settings) -> float | None:
    prices = GPU_PER_HOUR.get((settings.gpu_type, settings.region))
    if prices is None:
        return None
    return prices[1 if settings.spot else 0] * settings.gpu_count


def disk_gb_month(region: str) -> float:
    return PD_BALANCED_GB_MONTH.get(region, PD_BALANCED_UNKNOWN_REGION)


def disk_per_month(settings: Settings) -> float:
    return disk_gb_month(settings.region) * settings.disk_size_gb


def flow_logs_per_month(settings: Settings) -> float:
    return LOG_PRICE_PER_GIB * FLOW_LOG_GIB_PER_MONTH_ESTIMATE if settings.flow_logs else 0.0


def hourly_cost_estimate(settings: Settings) -> float | None:
    """USD per hour while the VM runs: VM + GPU + NAT + disk; None outside the table."""
    machine, gpu = machine_per_hour(settings), gpu_per_hour(settings)
    if machine is None or gpu is None:
        return None
    running = machine + gpu + NAT_PER_VM_HOUR + NAT_IP_PER_HOUR
    return round(running + disk_per_month(settings) / HOURS_PER_MONTH, 4)


def monthly_asleep_estimate(settings: Settings) -> float:
    """USD per month with the VM stopped: the boot disk and the flow logs (plus up to $3.65
    if Google keeps the NAT address allocated, and Artifact Registry storage, README Costs)."""
    return round(disk_per_month(settings) + flow_logs_per_month(settings), 2)


def spot_share(region: str, gpu_type: str = "nvidia-tesla-t4") -> float:
    """Spot price of n1-standard-4 + 1 GPU as a fraction of its on-demand price."""
    machine, gpu = N1_STANDARD_4[region], GPU_PER_HOUR[(gpu_type, region)]
    return (machine[1] + gpu[1]) / (machine[0] + gpu[0])


def _usd(value: float, digits: int = 3) -> str:
    return f"${value:.{digits}f}"


def _example(region: str, spot: bool) -> Settings:
    """The README's example settings (only the fields the prices read are meaningful)."""
    values: dict[str, Any] = {name: "" for name in Settings.__dataclass_fields__}
    values.update(
        region=region,
        machine_type="n1-standard-4",
        gpu_type="nvidia-tesla-t4",
        gpu_count=1,
        spot=spot,
        disk_size_gb=README_DISK_GB,
        flow_logs=True,
    )
    return Settings(**values)


def readme_tables() -> str:
    """The README's cost tables, exactly as the Costs section shows them."""
    columns = [(region, spot) for region in README_REGIONS for spot in (False, True)]
    examples = [_example(region, spot) for region, spot in columns]
    head = " | ".join(f"{r} Spot" if spot else r for r, spot in columns)
    nat = NAT_PER_VM_HOUR + NAT_IP_PER_HOUR

    def row(label: str, values: list[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    totals = [hourly_cost_estimate(s) or 0.0 for s in examples]
    running = [
        f"| per hour | {head} |",
        "| --- |" + " --- |" * len(columns),
        row("n1-standard-4", [_usd(machine_per_hour(s) or 0.0) for s in examples]),
        row("NVIDIA T4", [_usd(gpu_per_hour(s) or 0.0) for s in examples]),
        row("Cloud NAT (per VM) + its IP", [_usd(nat)] * len(columns)),
        row(
            f"boot disk ({README_DISK_GB} GB), per hour",
            [_usd(disk_per_month(s) / HOURS_PER_MONTH) for s in examples],
        ),
        row("**total**", [f"**≈ {_usd(t, 2)}**" for t in totals]),
        row(
            "Spot: share of the on-demand VM + GPU price",
            [f"{spot_share(r):.0%}" if spot else "" for r, spot in columns],
        ),
    ]
    tokyo, iowa = examples[0], examples[2]
    asleep = [
        "| per month | asia-northeast1 | us-central1 |",
        "| --- | --- | --- |",
        row(
            f"boot disk, {README_DISK_GB} GB pd-balanced (`diskSizeGb`)",
            [
                f"{_usd(disk_per_month(s), 2)} ({_usd(disk_gb_month(s.region))}/GB)"
                for s in (tokyo, iowa)
            ],
        ),
        row(
            "VPC flow logs (`flowLogs`, estimate)",
            [f"≈ {_usd(flow_logs_per_month(s), 2)}" for s in (tokyo, iowa)],
        ),
        row(
            "Cloud NAT address, if Google keeps it while the VM sleeps",
            [f"at most {_usd(NAT_IP_PER_HOUR * HOURS_PER_MONTH, 2)}"] * 2,
        ),
    ]
    hours = README_HOURS_PER_MONTH
    on_demand, spot = totals[0], totals[1]
    sleeping = monthly_asleep_estimate(tokyo)
    example = (
        f"Example: 2 hours of use a day in Tokyo ≈ {hours} h × {_usd(on_demand, 2)} + "
        f"{_usd(sleeping, 2)} ≈ **{_usd(hours * on_demand + sleeping, 0)}/month**, with Spot "
        f"≈ {hours} h × {_usd(spot, 2)} + {_usd(sleeping, 2)} ≈ "
        f"**{_usd(hours * spot + sleeping, 0)}/month** (Spot prices as of {SPOT_SNAPSHOT_DATE})."
    )
    return "\n".join([*running, "", *asleep, "", example]) + "\n"


if __name__ == "__main__":
    print(readme_tables(), end="")
