"""What the command modules share (``maata.cli`` puts their commands together): the error for
input a command cannot use, and command groups (``maata codec <subcommand>``). Only argparse is
imported, so ``maata --help`` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path


class CommandError(ValueError):
    """Input a command cannot use (a missing file, a checkpoint that does not fit, ...); the
    message says what and which file. ``maata.cli`` prints it as one line and exits 2."""


def existing_file(path: Path, what: str) -> Path:
    """``path`` when it is a file; else a ``CommandError`` naming ``what`` is missing or a folder
    (checked before a command's heavy imports, so a typo fails fast)."""
    if not path.exists():
        raise CommandError(f"{what} not found: {path}")
    if path.is_dir():
        raise CommandError(f"{what} is a folder, expected a file: {path}")
    return path


def command_group(subparsers: argparse._SubParsersAction, name: str, *, help: str, description: str,
                  dest: str, metavar: str = "<subcommand>") -> argparse._SubParsersAction:
    """The subcommands of the group ``maata <name>``: the group is added (with ``help`` and
    ``description``) unless a command module already did, so several modules can add to one
    group. ``maata <name>`` without a subcommand prints the group's help (``maata.cli.main``
    reads the group's parser from ``_parser``); the chosen subcommand's name lands in ``dest``."""
    group = subparsers.choices.get(name)
    if group is None:
        group = subparsers.add_parser(name, help=help, description=description)
        group.set_defaults(_parser=group)
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return group.add_subparsers(dest=dest, metavar=metavar)


__all__ = ["CommandError", "command_group", "existing_file"]
