"""The one command line: ``maata <command> ...``.

Each area of the project owns its commands in a small ``commands`` module that imports only
argparse at load time (heavy imports happen inside the handlers), so ``maata --help`` is fast.
A command module exposes ``register(subparsers)`` and sets ``func`` on its parsers; a group of
subcommands (``maata codec ...``) comes from ``maata.cliutil.command_group``, and input a command
cannot use raises ``maata.cliutil.CommandError`` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that add commands, in the order their commands appear in --help.
COMMAND_MODULES = [
    "maata.data.commands",
    "maata.data.dialogue_commands",  # adds to the `data` group, so it must come after it
    "maata.codec.commands",
    "training.commands",
    "training.lm_commands",  # adds `lm` to the `train` group, so it must come after it
    "training.kubeflow_commands",  # adds `submit` and `pipeline` to the `train` group
    "maata.lm.commands",
    "services.commands",
    "services.triton.commands",
    "services.probe",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maata",
        description="Maata: real-time full-duplex Telugu speech-to-speech. "
        "Run `maata <command> --help` for a command's options.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    func = getattr(args, "func", None)
    if func is None:
        # a group (e.g. `maata codec`) without a subcommand: show that group's help
        (getattr(args, "_parser", None) or parser).print_help()
        return 2
    try:
        return int(func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # bad input (audio, config, paths) is the user's to fix: one clear line, exit 2
        print(f"maata: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
