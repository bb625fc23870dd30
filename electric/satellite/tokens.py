"""
``electric gen-token USER [USER ...]``: print a JWT per user for Satellite clients.

The key and issuer come from the same environment as the running service
(SATELLITE_AUTH_SIGNING_KEY / SATELLITE_AUTH_SIGNING_ISS, via
`electric.config.Config.from_environ`), so a token made here is one the server
accepts.  Output formats follow the original ``mix electric.gen.token``:
a human-readable block per user (default), ``--format csv``
(``user_id,token,expiry``) or ``--format json``; ``--output PATH`` writes the
file (csv unless a format is given) and says so.

Also runnable as ``python -m electric.satellite.tokens USER ...``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
from typing import List, Mapping, Optional, TextIO

from electric.config import Config, ConfigError
from electric.satellite.auth import JWTAuth

DEFAULT_TTL = 31_536_000  # one year, as the original task


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("users", nargs="+", metavar="USER", help="user id to make a token for")
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL, help="token lifetime in seconds (default: one year)")
    parser.add_argument("--format", dest="format", default=None, help="json or csv (default: a readable listing)")
    parser.add_argument("--output", default=None, metavar="PATH", help="write to PATH (csv unless --format says json)")


def _iso(expiry: _dt.datetime) -> str:
    return expiry.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _human(expiry: _dt.datetime) -> str:
    return expiry.strftime("%Y-%m-%d %H:%M:%S.%fZ")


def render(tokens, fmt: Optional[str], colour: bool = False) -> str:
    """`tokens`: [(user, token, expiry)] in the order given."""
    if fmt == "json":
        obj = {user: {"expiry": _iso(exp), "token": tok} for user, tok, exp in tokens}
        return json.dumps(obj, indent=2, sort_keys=True) + "\n"
    if fmt == "csv":
        return "".join(f"{user},{tok},{_iso(exp)}\n" for user, tok, exp in tokens)
    bold, green, reset = ("\x1b[1m", "\x1b[32m", "\x1b[0m") if colour else ("", "", "")
    out = ["\n"]
    for user, tok, exp in tokens:
        out.append(f"user id: {bold}{user}{reset}\n  token: {green}{tok}{reset}\nexpiry: {_human(exp)}\n\n")
    return "".join(out)


def run(args: argparse.Namespace, environ: Optional[Mapping[str, str]] = None,
        stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if args.format not in (None, "json", "csv"):
        print(f"Invalid format '{args.format}'", file=stderr)
        return 1
    if args.ttl <= 0:
        print(f"Invalid ttl '{args.ttl}': expected a positive number of seconds", file=stderr)
        return 1
    try:
        config = Config.from_environ(os.environ if environ is None else environ)
    except ConfigError as e:
        print(str(e), file=stderr)
        return 1
    if not config.jwt_auth:
        print(
            "JWT authentication not configured (SATELLITE_AUTH_SIGNING_KEY is unset), "
            "provider set to insecure",
            file=stderr,
        )
        return 1
    auth = JWTAuth(config.auth_signing_key, config.auth_signing_iss)
    tokens = []
    for user in args.users:
        token, expiry = auth.generate(user, ttl=args.ttl)
        tokens.append((user, token, expiry))
    if args.output:
        text = render(tokens, args.format or "csv")
        with open(args.output, "w") as f:
            f.write(text)
        print(f"Written token information to {args.output}", file=stdout)
    else:
        colour = args.format is None and hasattr(stdout, "isatty") and stdout.isatty()
        stdout.write(render(tokens, args.format, colour=colour))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="electric gen-token", description="Generate Satellite client JWTs")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
