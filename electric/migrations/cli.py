"""
``electric apply-migration NAME [--connector C]``: ask a running Electric to
apply a migration, print each connector's outcome, exit non-zero on any
failure.

It only calls the HTTP API (the running service owns the databases and the
replication it must refresh), so it needs no database credentials: just
where the API listens (``--url``, else ``ELECTRIC_URL``, else
``http://127.0.0.1:$STATUS_PORT``) and, when the service requires one, the
API token from ``ELECTRIC_API_TOKEN`` (sent as a bearer token; never taken
on the command line, where other users of the host could read it).

Also runnable as ``python -m electric.migrations.cli [apply-migration] NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import List, Mapping, Optional, TextIO

from electric.migrations.migration import VSN_RE

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_TIMEOUT = 300.0  # a migration on a big table may take a while; the API answers when done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="migration name: a folder in MIGRATIONS_DIR, e.g. 1666288253_create_items")
    parser.add_argument("--connector", "-c", metavar="C",
                        help="apply to this connector only (default: every connector, in name order)")
    parser.add_argument("--url", metavar="URL",
                        help="Electric's HTTP API (default: $ELECTRIC_URL, else http://127.0.0.1:$STATUS_PORT)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the answer (default {DEFAULT_TIMEOUT:g})")


def api_url(args, environ: Mapping[str, str]) -> str:
    if getattr(args, "url", None):
        return args.url.rstrip("/")
    if environ.get("ELECTRIC_URL"):
        return environ["ELECTRIC_URL"].rstrip("/")
    port = environ.get("STATUS_PORT") or "5050"
    return f"http://127.0.0.1:{port}"


def _put(url: str, vsn: str, timeout: float, token: Optional[str] = None):
    """(status, body bytes) of a PUT; raises OSError if nobody answers."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps({"vsn": vsn}).encode(), method="PUT", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _describe(result: Mapping) -> str:
    if result.get("ok"):
        return f"applied {result.get('vsn')} (hash {result.get('hash')}, at {result.get('applied_at')})"
    return f"FAILED ({result.get('status')}): {result.get('error')}"


def run(args, environ: Optional[Mapping[str, str]] = None, out: TextIO = None, err: TextIO = None) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    name = getattr(args, "name", None)
    if not name:
        print("usage: electric apply-migration NAME [--connector C]\n"
              "  NAME: a migration folder in MIGRATIONS_DIR, e.g. 1666288253_create_items", file=err)
        return EXIT_FAILED
    if not VSN_RE.fullmatch(name):
        print(f"invalid migration name {name!r}: use letters, digits and _ only", file=err)
        return EXIT_USAGE
    base = api_url(args, environ)
    connector = getattr(args, "connector", None)
    path = "/api/migrations" + (f"/{urllib.parse.quote(connector, safe='')}" if connector else "")
    try:
        status, body = _put(base + path, name, getattr(args, "timeout", DEFAULT_TIMEOUT),
                            environ.get("ELECTRIC_API_TOKEN") or None)
    except OSError as e:
        reason = getattr(e, "reason", e)
        print(f"cannot reach Electric at {base}: {reason}", file=err)
        return EXIT_FAILED
    if status == 401:
        hint = ("the token in ELECTRIC_API_TOKEN was refused" if environ.get("ELECTRIC_API_TOKEN")
                else "set ELECTRIC_API_TOKEN to the service's API token")
        print(f"Electric at {base} requires an API token: {hint}", file=err)
        return EXIT_FAILED
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if connector:
        if status == 200:
            print(f"{connector}: applied {name}", file=out)
            return EXIT_OK
        message = data.get("error") if isinstance(data, dict) else text.strip()
        print(f"{connector}: FAILED ({status}): {message}", file=out)
        return EXIT_FAILED
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        results: List[Mapping] = data["results"]
        for result in results:
            print(f"{result.get('origin')}: {_describe(result)}", file=out)
        if not results:
            print(f"no connectors: {data.get('error', 'none configured')}", file=out)
        return EXIT_OK if status == 200 and results and all(r.get("ok") for r in results) else EXIT_FAILED
    message = data.get("error") if isinstance(data, dict) else text.strip()
    print(f"FAILED ({status}): {message}", file=out)
    return EXIT_FAILED


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["apply-migration"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="electric apply-migration",
        description="Apply a migration through a running Electric's HTTP API.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
