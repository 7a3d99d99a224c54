"""`text2img serve`: the web UI and the OpenAI-compatible API on one port.

Without an API token the service listens on 127.0.0.1 only (and refuses any other
--host), so nobody else can use the GPU; with a token every API call needs it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING

from text2img.engines import registry
from text2img.errors import UserError

if TYPE_CHECKING:
    from text2img.settings import Settings

HELP = "serve the web UI and the OpenAI-compatible API"
DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=registry.names(),
        default=None,
        help="glide: the released GLIDE weights; sdxl-lightning: SDXL-Lightning (4 steps, "
        "1024x1024); both downloaded once. tiny, tiny-sdxl: small random-weight models for "
        f"smoke tests, their images are noise (default: $TEXT2IMG_MODEL or "
        f"{registry.DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1; another address needs an API token)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        default=None,
        help="where the model runs (default: $TEXT2IMG_DEVICE, else auto)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="model precision (default: $TEXT2IMG_DTYPE, else float16 on CUDA, float32 on "
        "the CPU; bfloat16 = faster on CPUs with AVX512-BF16/AMX, slightly less precise)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="do not download missing weights (fail instead)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_host(host: str | None, has_token: bool) -> str:
    """Where to listen; refuses a non-loopback address without a token."""
    if host is None:
        return LOOPBACK
    if not has_token and not is_loopback(host):
        raise UserError(
            f"refusing to listen on {host} without an API token: anyone who can reach it "
            "could use this service; set TEXT2IMG_API_TOKEN (or TEXT2IMG_API_TOKEN_FILE) to "
            "a long random value, or leave out --host to serve on 127.0.0.1 only"
        )
    return host


def listening_socket(host: str, port: int) -> socket.socket:
    """The bound listening socket, made before uvicorn starts so that the "web UI and API
    at ..." line can name the port `--port 0` picked (uvicorn binds the same way)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port "
            "(0 = any free one) or stop what is using it"
        ) from None
    sock.listen(2048)  # connections queue from now on, before uvicorn's loop accepts them
    sock.set_inheritable(True)
    return sock


def _settings(args: argparse.Namespace) -> Settings:
    from pydantic import ValidationError

    from text2img.settings import Settings

    overrides: dict[str, object] = {}
    if args.model:
        overrides["model"] = args.model
    if args.device:
        overrides["device"] = args.device
    if args.dtype:
        overrides["dtype"] = args.dtype
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "TEXT2IMG_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UserError(f"{name}: {first['msg']}") from exc


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0-65535, not {args.port}")
    import logging

    import uvicorn

    from text2img.api.app import create_app
    from text2img.api.shutdown import GracefulServer
    from text2img.auth import load_token
    from text2img.slow_clients import header_timeout_protocol

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = _settings(args)
    token = load_token(settings.api_token, settings.api_token_file)
    host = resolve_host(args.host, token is not None)
    weights = registry.weights_module(settings.model)
    if weights is not None and not args.no_download:
        weights.ensure(settings.model_cache or registry.default_cache_dir(), progress=True)

    failures: list[str] = []
    server: uvicorn.Server | None = None

    def on_load_failure(message: str) -> None:
        failures.append(message)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    config = uvicorn.Config(
        app,
        host=host,
        port=args.port,
        log_level=args.log_level,
        # SIGTERM: GracefulServer drains first (TEXT2IMG_SHUTDOWN_GRACE_S); what is left
        # for uvicorn is writing out answers. A second Ctrl-C stops at once.
        timeout_graceful_shutdown=10,
        server_header=False,
        # the guard keys the throttle (TEXT2IMG_TRUST_FORWARDED); uvicorn must not
        # rewrite the client address from headers a client can forge
        proxy_headers=False,
        http=header_timeout_protocol(settings.header_timeout_s),
    )
    server = GracefulServer(config, app.state.service, settings.shutdown_grace_s)
    if token is None:
        print(
            "text2img serve: no API token set (TEXT2IMG_API_TOKEN): listening on "
            f"{host} only, without authentication",
            file=sys.stderr,
        )
    if registry.get_spec(settings.model).random_weights:
        print(
            f"text2img serve: --model {settings.model} draws with RANDOM WEIGHTS: its images "
            "are noise, for smoke tests only",
            file=sys.stderr,
        )
    sock = listening_socket(host, args.port)
    port = sock.getsockname()[1]  # the free port the system picked for --port 0
    shown = f"[{host}]" if ":" in host else host
    print(
        f"text2img serve: web UI and API at http://{shown}:{port}/ "
        f"(model {settings.model}, pid {os.getpid()})",
        file=sys.stderr,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a graceful shutdown
        print("text2img serve: stopped", file=sys.stderr)
    if failures:
        raise UserError(failures[0])
    return 0
