"""`text2img` command line: serve | generate | download."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from text2img import __version__
from text2img.errors import UserError

# name -> module under text2img.commands (see that package's docstring for the protocol)
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "generate": "generate",
    "download": "download",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2img",
        description="Your own text-to-image service (GLIDE, SDXL-Lightning): generate "
        "images, download the weights, or serve the web UI and OpenAI-compatible API.",
    )
    parser.add_argument("--version", action="version", version=f"text2img {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"text2img.commands.{module_name}")
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"text2img {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
