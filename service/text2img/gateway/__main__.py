"""`python -m text2img.gateway`: serve the gateway on $PORT (Cloud Run sets it; default 8080)."""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from text2img.errors import UserError
from text2img.gateway import logs
from text2img.gateway.app import create_app
from text2img.gateway.settings import GatewaySettings
from text2img.slow_clients import header_timeout_protocol


def main() -> int:
    logs.configure(logging.INFO)
    try:
        app = create_app()
    except UserError as exc:
        print(f"text2img gateway: error: {exc}", file=sys.stderr)
        return 2
    port = int(os.environ.get("PORT", "8080"))
    # X-Forwarded-For is read by the app's guard (the last entry, appended by Cloud Run).
    uvicorn.run(
        app,
        host=os.environ.get("HOST", "0.0.0.0"),
        port=port,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
        http=header_timeout_protocol(GatewaySettings().header_timeout_s),
        log_config=None,  # keep the JSON lines configured above
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
