"""Subcommands of the `text2img` CLI.

Each module exposes `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules stay light at import time (no torch, no FastAPI): heavy imports happen in `run`.
"""
