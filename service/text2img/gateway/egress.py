"""The first connections of a new gateway instance to the VM.

Cloud Run documents that with Direct VPC egress "you might experience connection
establishment delays of a minute or more on instance startup" and recommends retrying
the egress path (https://cloud.google.com/run/docs/configuring/vpc-direct-vpc,
Limitations). With minimum instances 0 the first request after a quiet spell usually
meets a fresh instance, so until one connection to the VM has worked, a refused or
timed-out connect is retried with a growing pause within a small budget; if the budget
runs out the caller answers 503 "connecting" with Retry-After (never 502, and never
"booting" for a VM that may be up and ready).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import httpx

FIRST_PAUSE_S = 0.25
MAX_PAUSE_S = 2.0


class EgressState:
    """Whether this gateway instance has reached the VM's network yet."""

    def __init__(self, warmup_budget_s: float) -> None:
        self.warmup_budget_s = warmup_budget_s
        self.reached = False

    async def get(
        self,
        http: httpx.AsyncClient,
        url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        warmup: bool = True,
    ) -> httpx.Response:
        """GET `url`; before the first success and when `warmup` (the VM should already be
        serving), connect failures are retried with back-off for up to `warmup_budget_s`
        seconds. Raises httpx.HTTPError like `http.get`."""
        budget = self.warmup_budget_s if warmup and not self.reached else 0.0
        deadline = time.monotonic() + budget
        pause = FIRST_PAUSE_S
        while True:
            try:
                resp = await http.get(url, headers=dict(headers), timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                left = deadline - time.monotonic()
                if self.reached or left <= 0:
                    raise
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, MAX_PAUSE_S)
                continue
            self.reached = True
            return resp
