"""SIGTERM without tracebacks or plain-text 500s.

uvicorn's own shutdown closes the listening socket, waits for requests up to its graceful
timeout and then cancels them, which answers the waiters of a long generation with
`500 text/plain` and logs a traceback each. `GracefulServer` drains the service first,
while it still accepts connections:

1. at once, new jobs and the jobs still waiting are refused with the JSON 503
   `shutting_down` + Retry-After (the scheduler's `begin_shutdown`);
2. the batch being drawn may finish within `grace_s`;
3. then it is cancelled before its next model call and its waiters get the same 503;

and only then hands over to uvicorn's shutdown, which finds nothing left to cancel. With
the defaults (80 s grace, 10 s for uvicorn, 10 s to join the worker) the process is gone
well before `docker stop -t 120` would kill it. A second Ctrl-C still stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from text2img.api.state import ServiceState

log = logging.getLogger(__name__)

POLL_S = 0.05
WORKER_JOIN_S = 10.0


async def drain(service: ServiceState, grace_s: float, abort: Callable[[], bool]) -> None:
    """Refuse and fail waiting work now, give the running batch `grace_s`, then cancel it."""
    scheduler = service.scheduler
    if scheduler is None:
        return
    scheduler.begin_shutdown()
    deadline = time.monotonic() + grace_s
    while scheduler.alive and time.monotonic() < deadline and not abort():
        await asyncio.sleep(POLL_S)
    if scheduler.alive:
        log.warning("the running batch did not finish within %.0f s; cancelling it", grace_s)
    await asyncio.to_thread(scheduler.stop, WORKER_JOIN_S)


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that drains the service (see the module docstring) before its own
    shutdown."""

    def __init__(self, config: uvicorn.Config, service: ServiceState, grace_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.grace_s = grace_s

    async def shutdown(self, sockets: Any = None) -> None:
        if not self.force_exit:
            log.info("shutting down: refusing new work, %.0f s for the running batch", self.grace_s)
            await drain(self.service, self.grace_s, lambda: self.force_exit)
        await super().shutdown(sockets)
