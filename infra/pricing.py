"""A small price table for the cost outputs (USD, on-demand list prices, no discounts).

Dated 2026 (compiled for docs/gcp-facts.md §3): VM and GPU hourly prices from the SkyPilot
catalog v8 @006059e0, which is generated from the Google Cloud billing catalog; Cloud NAT
from https://cloud.google.com/nat/pricing; pd-balanced from the SKU notes in the facts
(us-central1 $0.10/GB-month; asia-northeast1 not verified, assumed $0.12). Estimates only:
check the billing console or https://cloud.google.com/products/calculator for your bill.
"""

from __future__ import annotations

import re

from infra.config import Settings

PRICE_TABLE_DATE = "2026 (docs/gcp-facts.md §3)"
PRICE_TABLE_SOURCE = (
    "SkyPilot catalog v8 @006059e0 (GCP billing catalog); cloud.google.com/nat/pricing"
)

# (region, on-demand, spot) USD per hour
N1_STANDARD_4 = {"us-central1": (0.19000, 0.05223), "asia-northeast1": (0.24376, 0.06662)}
GPU_PER_HOUR = {
    ("nvidia-tesla-t4", "us-central1"): (0.35, 0.175),
    ("nvidia-tesla-t4", "asia-northeast1"): (0.37, 0.1311),
}
PD_BALANCED_GB_MONTH = {"us-central1": 0.10, "asia-northeast1": 0.12}
NAT_PER_VM_HOUR = 0.0014
NAT_IP_PER_HOUR = 0.005  # the NAT's auto-allocated address, while it is in use
NAT_PER_GIB = 0.045
HOURS_PER_MONTH = 730


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


def disk_per_month(settings: Settings) -> float:
    return PD_BALANCED_GB_MONTH.get(settings.region, 0.12) * settings.disk_size_gb


def hourly_cost_estimate(settings: Settings) -> float | None:
    """USD per hour while the VM runs: VM + GPU + NAT + disk; None outside the table."""
    machine, gpu = machine_per_hour(settings), gpu_per_hour(settings)
    if machine is None or gpu is None:
        return None
    running = machine + gpu + NAT_PER_VM_HOUR + NAT_IP_PER_HOUR
    return round(running + disk_per_month(settings) / HOURS_PER_MONTH, 4)


def monthly_asleep_estimate(settings: Settings) -> float:
    """USD per month with the VM stopped: the boot disk (plus up to $3.65 if Google keeps
    the NAT address allocated, and Artifact Registry storage, see README Costs)."""
    return round(disk_per_month(settings), 2)
