"""
The `electric` command (also `python -m electric`).

    electric run [twistd options]      the service in the foreground (twistd -n electric)
    electric gen-token USER...         Satellite client JWTs (needs SATELLITE_AUTH_SIGNING_KEY)
    electric apply-migration NAME      apply a migration through a running Electric's HTTP API

Each subcommand's module is imported only when that subcommand runs, so a
problem in one part never breaks the others (or `electric --help`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

# name -> (module providing add_arguments(parser) and run(args) -> int, summary)
COMMANDS = {
    "gen-token": ("electric.satellite.tokens", "generate Satellite client JWTs"),
    "apply-migration": ("electric.migrations.cli", "apply a migration through a running Electric"),
}


def _top_parser() -> argparse.ArgumentParser:
    lines = ["commands:",
             "  run [twistd options]  run the service in the foreground (twistd -n electric);"
             " configured by environment variables, see `twistd electric --help`"]
    lines += [f"  {name:<21} {summary}" for name, (_module, summary) in COMMANDS.items()]
    parser = argparse.ArgumentParser(
        prog="electric",
        description="Active-active replication between Postgres databases and Satellite clients.",
        epilog="\n".join(lines) + "\n\n`electric COMMAND --help` describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["run", *COMMANDS], metavar="COMMAND")
    return parser


def twistd_argv(extra: Sequence[str]) -> List[str]:
    """The command line `electric run` replaces itself with."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *extra, "electric"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the first word is ours; the rest belongs to the subcommand (or
    # twistd), including its own --help.
    command, rest = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, argv)
    if command not in ("run", *COMMANDS):
        _top_parser().parse_args(argv[:1])  # prints help or a usage error and exits
    if command == "run":
        args = twistd_argv(rest)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(args[0], args)
    module_name, summary = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"electric {command}", description=summary)
    module.add_arguments(parser)
    return module.run(parser.parse_args(rest))
