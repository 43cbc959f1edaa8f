"""``maata --help`` and every ``maata <command> [<subcommand>] --help`` print their help without
importing torch (or numpy, gRPC, aiortc): the command modules import only argparse at load time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "grpc", "aiortc", "soundfile", "scipy")

SCRIPT = """
import argparse, contextlib, io, json, sys
from maata.cli import build_parser, main

def commands(parser, prefix):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield [*prefix, name]
                yield from commands(sub, [*prefix, name])

argvs = [[]] + list(commands(build_parser(), []))
helps = {}
for argv in argvs:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*argv, "--help"])
    helps[" ".join(argv)] = out.getvalue()
print(json.dumps({"helps": helps, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def test_help_of_every_command_imports_no_heavy_module() -> None:
    import json

    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result["heavy"] == []
    helps = result["helps"]
    assert {"", "serve", "client", "codec", "train", "lm"} <= set(helps)
    for argv, text in helps.items():
        assert text.startswith("usage: maata"), (argv, text[:200])


def test_command_group_is_shared_by_the_modules_that_add_to_it(capsys) -> None:
    """``maata.cliutil.command_group``: a second module adds to the group the first one made
    (its help and description stay), and the group alone prints its help and exits 2."""
    import argparse

    from maata.cli import main
    from maata.cliutil import command_group

    parser = argparse.ArgumentParser(prog="maata")
    top = parser.add_subparsers(dest="command")
    first = command_group(top, "things", help="the first module's", description="Things.", dest="thing")
    first.add_parser("one")
    second = command_group(top, "things", help="ignored", description="ignored", dest="ignored")
    second.add_parser("two")
    assert second is first and set(first.choices) == {"one", "two"}
    assert parser.parse_args(["things", "two"]).thing == "two"
    args = parser.parse_args(["things"])
    assert args._parser.description == "Things."
    assert main(["codec"]) == 2 and "The streaming Telugu neural codec." in capsys.readouterr().out
