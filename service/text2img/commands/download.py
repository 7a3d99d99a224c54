"""`text2img download` (placeholder until the service lands)."""

from __future__ import annotations

import argparse

from text2img.errors import UserError

HELP = "download and verify the GLIDE weights"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=["glide", "tiny"], default="glide")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    raise UserError("the weight download is not built yet (issue #3); nothing was started")
