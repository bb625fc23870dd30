"""
Logs an operator can act on: one way to log, one way to write it.

Every module logs through a `twisted.logger.Logger` with an event format
string and keyword fields (``log.warn("table {table} skipped: {reason}",
table=..., reason=...)``).  What a line is *about* travels as structured
fields of fixed names, `IDENTITY_FIELDS`: ``connector`` (a database of
CONNECTORS), ``slot`` (a port-5433 replication slot), ``client_id`` and
``user_id`` (a Satellite client), ``peer`` (the remote address of a
connection).  A long-lived link binds them once (`bind`) and every line it
logs carries them, so no call site repeats or forgets them.

Levels mean: ``debug`` per-message chatter; ``info`` the normal life of a
link (started, connected, closed cleanly); ``warn`` something skipped or
refused by design, or a peer misbehaving, that needs no fix in Electric
(a table without a primary key, a failed login, a bad token); ``error`` a
link failed and is being retried, data could not be moved; ``critical``
Electric cannot go on (a port cannot be bound).

The output (`LogFormat`, `observer`) adds GLOBAL_CLUSTER_ID and
ELECTRIC_INSTANCE_ID to every line, renders text (LOG_FORMAT=text, the
default: fields as ``[connector=db1 ...]``) or one JSON object per line
(LOG_FORMAT=json), drops events below LOG_LEVEL, and as a last line of
defence replaces the configured secrets (connector passwords, the JWT
signing key, the API token) wherever they would appear.  Under twistd it
writes where twistd would (stdout with ``-n``, ``--logfile``, twistd.log;
``--syslog`` and ``--logger`` keep twistd's own observer).
"""

from __future__ import annotations

import json
import math
import signal
import sys
from datetime import datetime, timezone
from typing import IO, Callable, Dict, Iterable, List, Optional, Tuple

from twisted.logger import (
    FilteringLogObserver,
    FileLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    eventAsText,
    formatEvent,
    formatTime,
)

IDENTITY_FIELDS: Tuple[str, ...] = ("connector", "slot", "client_id", "user_id", "peer")
"""Fields naming what a line is about, in the order text lines show them."""

INSTANCE_FIELDS: Tuple[str, ...] = ("cluster_id", "instance_id")
"""Added to every line: GLOBAL_CLUSTER_ID and ELECTRIC_INSTANCE_ID."""

LEVELS: Dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}

FORMATS = ("text", "json")

MIN_REDACTED = 8
"""Shorter configured secrets are not searched for in lines (they would hide ordinary words)."""

_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "why", "failure"})
"""Keys of events from twisted.python.log (their content is in the message already)."""

_RESERVED_JSON = frozenset({"time", "level", "namespace", "message", "event", "failure", "traceback",
                            "system", *INSTANCE_FIELDS})


class BoundLogger(Logger):
    """
    A `Logger` that adds fixed fields (`fields`) to every event it emits;
    a field given at the call wins.  ``bind(**more)`` gives a new one with
    more fields, so a connection that learns who it talks to rebinds
    (``self.log = self.log.bind(client_id=...)``).
    """

    def __init__(self, namespace: Optional[str] = None, source: object = None, observer=None,
                 fields: Optional[Dict[str, object]] = None):
        super().__init__(namespace, source, observer)
        self.fields: Dict[str, object] = {k: v for k, v in (fields or {}).items() if v is not None}

    def bind(self, **fields) -> "BoundLogger":
        merged = dict(self.fields)
        merged.update({k: v for k, v in fields.items() if v is not None})
        return BoundLogger(self.namespace, self.source, self.observer, merged)

    def emit(self, level, format=None, **kwargs):
        if self.fields:
            kwargs = {**self.fields, **kwargs}
        super().emit(level, format, **kwargs)


def bind(logger: Logger, **fields) -> BoundLogger:
    """`logger` (a module's Logger) with `fields` on every event."""
    if isinstance(logger, BoundLogger):
        return logger.bind(**fields)
    return BoundLogger(logger.namespace, logger.source, logger.observer, fields)


# --- output -------------------------------------------------------------------


class Redactor:
    """Replaces known secret strings (at least MIN_REDACTED characters) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets: List[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: Optional[str]) -> None:
        if secret and len(secret) >= MIN_REDACTED and secret not in self.secrets:
            self.secrets.append(secret)
            self.secrets.sort(key=len, reverse=True)  # a secret inside another goes after it

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text


def config_secrets(config) -> List[str]:
    """Every secret the configuration holds: connector passwords and sslpassword, signing key, API token."""
    found = []
    for c in getattr(config, "connectors", ()):
        found.append(c.password)
        found += [v for k, v in c.params if k in ("password", "sslpassword")]
        found.append(getattr(c.tls, "password", None))
    found += [getattr(config, "auth_signing_key", None), getattr(config, "api_token", None)]
    return sorted({s for s in found if s})


def _plain(value) -> str:
    """A field value for a text line: bare when unambiguous, else JSON-quoted."""
    text = str(value)
    if text and not any(ch.isspace() or ch in '"=[]' for ch in text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _jsonable(value):
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


class LogFormat:
    """
    Renders one event as a line of text or JSON, with the instance's
    identity and the configured secrets hidden.
    """

    def __init__(self, cluster_id: str, instance_id: str, redact: Optional[Callable[[str], str]] = None):
        self.instance = {"cluster_id": cluster_id, "instance_id": instance_id}
        self.redact = redact or (lambda text: text)

    def fields(self, event) -> List[Tuple[str, object]]:
        """The identity fields of `event` (GLOBAL_CLUSTER_ID / ELECTRIC_INSTANCE_ID last)."""
        out = [(k, event[k]) for k in IDENTITY_FIELDS if event.get(k) is not None]
        return out + list(self.instance.items())

    def text(self, event) -> Optional[str]:
        body = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not body:
            return None
        level = event.get("log_level")
        system = event.get("log_system")
        if system is None:
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        fields = " ".join(f"{k}={_plain(v)}" for k, v in self.fields(event))
        line = f"{formatTime(event.get('log_time'))} [{system}] [{fields}] {body}"
        return self.redact(line.replace("\n", "\n\t")) + "\n"

    def json(self, event) -> Optional[str]:
        level = event.get("log_level")
        when = event.get("log_time")
        out = {
            "time": (datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="milliseconds")
                     if when is not None else None),
            "level": level.name if level is not None else None,
            "namespace": event.get("log_namespace"),
            "message": formatEvent(event),
        }
        legacy = "log_text" in event or "log_legacy" in event
        if event.get("log_format") is not None and not legacy:
            out["event"] = event["log_format"]
        if "log_system" in event:
            out["system"] = str(event["log_system"])
        out.update(self.instance)
        for key, value in event.items():
            if key.startswith("log_") or (legacy and key in _LEGACY_KEYS):
                continue
            if key in _RESERVED_JSON:
                key = "field_" + key
            out[key] = _jsonable(value)
        failure = event.get("log_failure")
        if failure is not None:
            try:
                out["failure"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
                out["traceback"] = failure.getTraceback()
            except Exception:  # a broken failure must not lose the line
                out["failure"] = str(failure)
        if not out["message"] and "failure" not in out:
            return None
        text = json.dumps(out, ensure_ascii=False, default=str)
        return self.redact(text) + "\n"


def observer(config, out: IO[str], fmt: Optional[str] = None, level: Optional[str] = None,
             redactor: Optional[Redactor] = None) -> ILogObserver:
    """
    The log observer for `config` writing to `out`: LOG_FORMAT (or `fmt`),
    events at LOG_LEVEL (or `level`) and above, the instance's identity on
    every line, the configuration's secrets hidden.
    """
    fmt = fmt or getattr(config, "log_format", "text")
    level = level or getattr(config, "log_level", "info")
    if redactor is None:
        redactor = Redactor(config_secrets(config))
    formatter = LogFormat(config.global_cluster_id, config.instance_id, redactor)
    writer = FileLogObserver(out, formatter.json if fmt == "json" else formatter.text)
    return FilteringLogObserver(writer, [LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])])


def twistd_output(server_options) -> Optional[IO[str]]:
    """
    The file twistd itself would log to for `server_options` (twistd's
    ServerOptions): stdout under ``-n`` without ``--logfile`` or with
    ``--logfile=-``, else ``--logfile`` (default twistd.log) with SIGUSR1
    reopening it as twistd does.  None with ``--syslog`` or ``--logger``:
    the operator chose another observer, twistd keeps it.
    """
    if server_options.get("syslog") or server_options.get("logger"):
        return None
    name = server_options.get("logfile")
    nodaemon = server_options.get("nodaemon")
    if name == "-":
        if not nodaemon:
            sys.exit("Daemons cannot log to stdout, exiting!")
        return sys.stdout
    if nodaemon and not name:
        return sys.stdout
    from twisted.python import logfile

    log_file = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        def rotate(signum, frame):
            from twisted.internet import reactor

            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return log_file
