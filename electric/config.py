"""
Configuration: every environment variable Electric reads, validated at once.

`Config.from_environ` turns an environment mapping into one immutable
`Config`, or raises `ConfigError` listing *every* problem (variable name, the
offending value with secrets masked, and what was expected), so an operator
fixes a broken deployment in one round instead of one variable per restart.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from electric import tls as listener_tls
from electric.postgres.tls import TLSSettings

MIN_SIGNING_KEY_BYTES = 32


class ConfigError(Exception):
    """The environment does not describe a runnable Electric."""

    def __init__(self, problems: List[str]):
        self.problems = list(problems)
        super().__init__(
            "invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class Connector:
    """One Postgres in CONNECTORS: `name=postgresql://user:pass@host:port/db?params`."""

    name: str
    host: str
    port: int
    database: str
    user: str
    password: str = field(repr=False, default="")
    params: Tuple[Tuple[str, str], ...] = ()
    connect_timeout_ms: int = 5000
    # The logical slot Electric reads from in this database's server; None =
    # POSTGRES_SLOT.  Slots are per server, so two databases of one server
    # need different ones (`?slot=` in the URL).
    slot: Optional[str] = None
    # sslmode & co. from the URL: the replication stream and every libpq
    # session follow the same settings (electric.postgres.tls).
    tls: TLSSettings = TLSSettings()

    def __repr__(self) -> str:
        # The URL's parameters may hold sslpassword.
        params = tuple((k, "***" if k == "sslpassword" else v) for k, v in self.params)
        return (f"Connector(name={self.name!r}, host={self.host!r}, port={self.port!r}, "
                f"database={self.database!r}, user={self.user!r}, params={params!r}, "
                f"connect_timeout_ms={self.connect_timeout_ms!r}, slot={self.slot!r}, tls={self.tls!r})")

    def dsn(self) -> str:
        """libpq keyword DSN for psycopg2/txpostgres (a normal SQL session)."""
        def q(v):
            return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts = [
            f"host={q(self.host)}",
            f"port={self.port}",
            f"dbname={q(self.database)}",
            f"user={q(self.user)}",
            f"connect_timeout={max(1, self.connect_timeout_ms // 1000)}",
        ]
        if self.password:
            parts.append(f"password={q(self.password)}")
        # The TLS settings the replication stream uses too (URL or PGSSL*
        # variables); the URL's other parameters are Electric's, not libpq's.
        parts += [f"{k}={q(v)}" for k, v in self.tls.libpq_params()]
        return " ".join(parts)


# name -> (default, help).  Order here is the order `--help` documents them.
VARIABLES: Dict[str, Tuple[Optional[str], str]] = {
    "CONNECTORS": ("", "Postgres databases to replicate: name=postgresql://user:pass@host:port/db;name2=..."),
    "ELECTRIC_HOST": ("127.0.0.1", "host the Postgres servers use to reach Electric's port 5433 (written into their subscriptions)"),
    "POSTGRES_REPLICATION_PORT": ("5433", "port where Postgres subscribers connect to Electric"),
    "POSTGRES_PUBLICATION": ("all_tables", "publication Electric creates and reads in every Postgres"),
    "POSTGRES_SLOT": ("all_changes", "logical replication slot Electric creates in every Postgres"),
    "WEBSOCKET_PORT": ("5133", "Satellite websocket port (path /ws)"),
    "STATUS_PORT": ("5050", "HTTP status and migrations API port"),
    "ELECTRIC_API_TOKEN": (None, "bearer token the HTTP API requires for migrations, /api/status/details and /metrics (>= 16 characters of A-Z a-z 0-9 - . _ ~ + /); unset = no token (/api/status is always open)"),
    "LISTEN_HOST": ("0.0.0.0", "address Electric's listeners bind to: an IPv4 or IPv6 address (:: = every interface, IPv4 too where the system allows)"),
    "POSTGRES_REPLICATION_TLS_CERT_FILE": (None, "PEM certificate (then any intermediates) for TLS on port 5433; set with the key, port 5433 then accepts TLS connections only and the subscriptions ask for TLS; unset = no TLS"),
    "POSTGRES_REPLICATION_TLS_KEY_FILE": (None, "PEM private key (unencrypted) of POSTGRES_REPLICATION_TLS_CERT_FILE"),
    "POSTGRES_REPLICATION_SSLROOTCERT": (None, "path ON EACH POSTGRES SERVER'S MACHINE of the CA file that signed POSTGRES_REPLICATION_TLS_CERT_FILE; written into the subscriptions as sslrootcert with sslmode=verify-full (the certificate must name ELECTRIC_HOST); unset = sslmode=require (encrypted, not verified)"),
    "WEBSOCKET_TLS_CERT_FILE": (None, "PEM certificate (then any intermediates) for wss:// on WEBSOCKET_PORT (may be the same file as port 5433's); unset = ws://"),
    "WEBSOCKET_TLS_KEY_FILE": (None, "PEM private key (unencrypted) of WEBSOCKET_TLS_CERT_FILE"),
    "STATUS_TLS_CERT_FILE": (None, "PEM certificate (then any intermediates) for https:// on STATUS_PORT (may be the same file as the others); unset = http://"),
    "STATUS_TLS_KEY_FILE": (None, "PEM private key (unencrypted) of STATUS_TLS_CERT_FILE"),
    "ELECTRIC_DATA_DIR": ("./electric_data", "directory of the hub's log and row state (with VAXINE_HOST: the local copy of what the Vaxine stream carried)"),
    "OFFSET_STORAGE_FILE": ("./offset_storage_data.dat", "file keeping each subscriber's LSN <-> hub position map and client positions"),
    "MIGRATIONS_DIR": ("./migrations", "directory holding one folder per migration"),
    "MIGRATIONS_FILE_NAME_SUFFIX": ("/postgres.sql", "appended to a migration name to find its SQL file"),
    "LOG_FORMAT": ("text", "log output: text (one readable line per event, fields as [connector=... instance_id=...]) or json (one JSON object per line, every field a key)"),
    "LOG_LEVEL": ("info", "lowest level logged: debug, info, warn, error or critical"),
    "SATELLITE_AUTH_SIGNING_KEY": (None, "HS256 key (>= 32 bytes) for client JWTs; unset = insecure auth (token is the user id)"),
    "SATELLITE_AUTH_SIGNING_ISS": (None, "required JWT issuer (needs the signing key)"),
    "GLOBAL_CLUSTER_ID": ("dev.electric-db", "cluster identifier: on every log line (cluster_id), in /api/status/details (instance) and as label cluster_id of every metric"),
    "ELECTRIC_INSTANCE_ID": ("instance-1.region-1.dev.electric-db", "identifier of this Electric instance: on every log line (instance_id), in /api/status/details (instance) and as label instance_id of every metric"),
    "ELECTRIC_REGIONAL_ID": ("region-1.dev.electric-db", "server id sent to Satellite clients"),
    "VAXINE_HOST": (None, "Vaxine host: set = the hub is Vaxine (several Electrics may share one); unset = embedded hub"),
    "VAXINE_API_PORT": ("8087", "Vaxine protocol-buffers API port"),
    "VAXINE_REPLICATION_PORT": ("8088", "Vaxine replication stream port"),
    "VAXINE_CONNECTION_TIMEOUT": ("5000", "Vaxine connect timeout in ms"),
}

SECRET_VARIABLES = frozenset({"SATELLITE_AUTH_SIGNING_KEY", "ELECTRIC_API_TOKEN"})
MIN_API_TOKEN_CHARS = 16
_API_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def mask(value: str) -> str:
    """Show a secret's shape, never its content."""
    return f"<{len(value.encode())} bytes hidden>"


_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def _mask_url_password(url: str) -> str:
    """
    Hide the password of a connection URL, also in URLs too broken to parse:
    error messages go to logs, and a typo must not leak a credential there.
    Errs towards hiding too much (everything up to the last '@').
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme at all, e.g. "user:password@host/db"
        scheme, rest = "", url
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        user = rest[:at].split(":", 1)[0]
        rest = f"{user}:***{rest[at:]}"
    return _QUERY_PASSWORD.sub(r"\1***", scheme + sep + rest)


def _digits(text: Optional[str]) -> bool:
    """Plain ASCII decimal digits only: int() would also take ' 5', '5_0', '+5' and '²'."""
    return bool(text) and text.isascii() and text.isdigit()


def _valid_port(text: Optional[str]) -> Optional[int]:
    """A TCP port 1..65535 written as plain decimal digits, else None."""
    if not _digits(text) or len(text) > 5:
        return None
    n = int(text)
    return n if 1 <= n <= 65535 else None


def parse_connectors(text: str, problems: List[str],
                     environ: Optional[Mapping[str, str]] = None) -> Tuple[Connector, ...]:
    """
    Parse CONNECTORS, appending one message per bad entry to `problems`.

    Unlike the original, user and password are percent-decoded (so a
    password may contain '@', ':' or '/') and `postgres://` is accepted
    as well as `postgresql://`.  Query parameters are kept on the
    Connector; `host`, `port`, `user`, `dbname` override the URL parts as
    in libpq, `timeout` (ms) is the connect timeout and `slot` names this
    database's replication slot (default POSTGRES_SLOT).  The ``ssl*``
    parameters become the connector's `TLSSettings` (libpq's PGSSLMODE & co.
    in `environ` fill in those the URL leaves out, as libpq does).
    """
    expected = "name=postgresql://user:password@host:port/database"
    result: List[Connector] = []
    seen = set()
    for raw in text.split(";"):
        item = raw.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name or not url or "://" in name:
            problems.append(f"CONNECTORS: entry {_mask_url_password(item)!r} is not {expected}")
            continue
        shown = _mask_url_password(url)
        if not all(ch.isalnum() or ch == "_" for ch in name) or not name.isascii():
            problems.append(
                f"CONNECTORS: connector name {name!r} must contain only ASCII letters, digits and _"
            )
            continue
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            problems.append(f"CONNECTORS: {name}: {shown!r} is not {expected} ({e})")
            continue
        if parts.scheme not in ("postgres", "postgresql"):
            problems.append(f"CONNECTORS: {name}: {shown!r} is not {expected} (scheme must be postgresql)")
            continue
        if port == 0:
            problems.append(f"CONNECTORS: {name}: {shown!r} has port 0 (expected 1 to 65535)")
            continue
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database or not parts.username:
            problems.append(f"CONNECTORS: {name}: {shown!r} is not {expected} (needs user, host and database)")
            continue
        params = tuple(parse_qsl(parts.query, keep_blank_values=True))
        pdict = dict(params)
        timeout_ms = 5000
        if "timeout" in pdict:
            text_ms = pdict["timeout"]
            if not _digits(text_ms) or int(text_ms) <= 0:
                problems.append(f"CONNECTORS: {name}: timeout={text_ms!r} is not a positive integer (ms)")
                continue
            timeout_ms = int(text_ms)
        if "port" in pdict:
            port = _valid_port(pdict["port"])
            if port is None:
                problems.append(
                    f"CONNECTORS: {name}: port={pdict['port']!r} is not a port number from 1 to 65535"
                )
                continue
        slot = pdict.get("slot")
        if slot is not None and not _identifier(slot):
            problems.append(f"CONNECTORS: {name}: slot={slot!r} must be a name of lowercase letters, digits and _")
            continue
        try:
            tls = TLSSettings.from_params(pdict, environ)
        except ValueError as e:
            problems.append(f"CONNECTORS: {name}: {e}")
            continue
        if name in seen:
            problems.append(f"CONNECTORS: connector name {name!r} appears more than once")
            continue
        seen.add(name)
        result.append(
            Connector(
                name=name,
                host=pdict.get("host") or parts.hostname,
                port=port or 5432,
                database=pdict.get("dbname") or database,
                user=pdict.get("user") or unquote(parts.username),
                password=unquote(parts.password or ""),
                params=params,
                connect_timeout_ms=timeout_ms,
                slot=slot,
                tls=tls,
            )
        )
    return tuple(sorted(result, key=lambda c: c.name))


def _identifier(text: str) -> bool:
    """A replication slot name Postgres accepts: lowercase letters, digits and _, at most 63."""
    return bool(text) and len(text) <= 63 and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in text)


@dataclass(frozen=True)
class Config:
    """
    Everything the service reads from its environment, checked once at
    startup so no component has to re-validate or fail later on a typo.
    """

    connectors: Tuple[Connector, ...] = ()
    electric_host: str = "127.0.0.1"
    postgres_replication_port: int = 5433
    publication: str = "all_tables"
    slot: str = "all_changes"
    websocket_port: int = 5133
    status_port: int = 5050
    listen_host: str = "0.0.0.0"
    # TLS of Electric's own listeners (None = plain); see electric.tls.
    postgres_replication_tls: Optional[listener_tls.TLSFiles] = None
    # sslrootcert written into the subscriptions: a path on the Postgres servers' machines.
    postgres_replication_sslrootcert: Optional[str] = None
    websocket_tls: Optional[listener_tls.TLSFiles] = None
    status_tls: Optional[listener_tls.TLSFiles] = None
    data_dir: str = "./electric_data"
    offset_storage_file: str = "./offset_storage_data.dat"
    migrations_dir: str = "./migrations"
    migrations_file_name_suffix: str = "/postgres.sql"
    auth_signing_key: Optional[str] = field(default=None, repr=False)
    auth_signing_iss: Optional[str] = None
    api_token: Optional[str] = field(default=None, repr=False)
    global_cluster_id: str = "dev.electric-db"
    instance_id: str = "instance-1.region-1.dev.electric-db"
    regional_id: str = "region-1.dev.electric-db"
    log_format: str = "text"
    log_level: str = "info"
    vaxine_host: Optional[str] = None
    vaxine_api_port: int = 8087
    vaxine_replication_port: int = 8088
    vaxine_connection_timeout_ms: int = 5000

    @property
    def embedded_hub(self) -> bool:
        """True when VAXINE_HOST is unset: the hub lives in ELECTRIC_DATA_DIR."""
        return self.vaxine_host is None

    @property
    def jwt_auth(self) -> bool:
        return self.auth_signing_key is not None

    def slot_for(self, connector: Connector) -> str:
        """The replication slot Electric reads `connector`'s changes from."""
        return connector.slot or self.slot

    def connector(self, name: str) -> Connector:
        for c in self.connectors:
            if c.name == name:
                return c
        raise KeyError(name)

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> "Config":
        env = os.environ if environ is None else environ
        problems: List[str] = []

        def get(name: str) -> Optional[str]:
            value = env.get(name)
            if value is None or value == "":
                return VARIABLES[name][0]
            return value

        def shown(name: str, value: str) -> str:
            return mask(value) if name in SECRET_VARIABLES else repr(value)

        def port(name: str) -> int:
            value = get(name)
            n = _valid_port(value)
            if n is None:
                problems.append(f"{name}={shown(name, value)}: expected a port number from 1 to 65535")
                return 0
            return n

        def positive_int(name: str) -> int:
            value = get(name)
            if not _digits(value) or int(value) <= 0:
                problems.append(f"{name}={shown(name, value)}: expected a positive integer")
                return 0
            return int(value)

        def identifier(name: str) -> str:
            value = get(name)
            if not value or not value.isascii() or not all(ch.isalnum() or ch == "_" for ch in value):
                problems.append(f"{name}={value!r}: expected a name of letters, digits and _")
            return value

        connectors = parse_connectors(get("CONNECTORS") or "", problems, env)
        key = get("SATELLITE_AUTH_SIGNING_KEY")
        iss = get("SATELLITE_AUTH_SIGNING_ISS")
        if key is not None and len(key.encode()) < MIN_SIGNING_KEY_BYTES:
            problems.append(
                f"SATELLITE_AUTH_SIGNING_KEY={mask(key)}: expected at least {MIN_SIGNING_KEY_BYTES} bytes"
            )
        if iss is not None and key is None:
            problems.append(
                f"SATELLITE_AUTH_SIGNING_ISS={iss!r}: an issuer needs SATELLITE_AUTH_SIGNING_KEY too"
            )
        api_token = get("ELECTRIC_API_TOKEN")
        if api_token is not None and (len(api_token) < MIN_API_TOKEN_CHARS or not _API_TOKEN.fullmatch(api_token)):
            problems.append(
                f"ELECTRIC_API_TOKEN={mask(api_token)}: expected at least {MIN_API_TOKEN_CHARS} characters of "
                "A-Z a-z 0-9 - . _ ~ + / (a bearer token)"
            )
        listen_host = get("LISTEN_HOST").strip()
        if not listen_host or any(ch.isspace() for ch in listen_host):
            problems.append(f"LISTEN_HOST={listen_host!r}: expected an IPv4 or IPv6 address")

        def tls_pair(prefix: str) -> Optional[listener_tls.TLSFiles]:
            cert_var, key_var = f"{prefix}_TLS_CERT_FILE", f"{prefix}_TLS_KEY_FILE"
            cert, key = get(cert_var), get(key_var)
            if cert is None and key is None:
                return None
            if cert is None or key is None:
                have, missing = (cert_var, key_var) if key is None else (key_var, cert_var)
                problems.append(f"{have} is set but {missing} is not: TLS needs both the certificate and its key")
                return None
            files = listener_tls.TLSFiles(cert, key)
            found = listener_tls.problems(cert_var, key_var, files)
            problems.extend(found)
            return None if found else files

        replication_tls = tls_pair("POSTGRES_REPLICATION")
        sslrootcert = get("POSTGRES_REPLICATION_SSLROOTCERT")
        if sslrootcert is not None:
            if env.get("POSTGRES_REPLICATION_TLS_CERT_FILE") in (None, ""):
                problems.append(
                    f"POSTGRES_REPLICATION_SSLROOTCERT={sslrootcert!r}: needs POSTGRES_REPLICATION_TLS_CERT_FILE and "
                    "POSTGRES_REPLICATION_TLS_KEY_FILE (port 5433 has no TLS without them)")
        log_format = get("LOG_FORMAT").strip().lower()
        if log_format not in ("text", "json"):
            problems.append(f"LOG_FORMAT={get('LOG_FORMAT')!r}: expected text or json")
        log_level = get("LOG_LEVEL").strip().lower()
        if log_level not in ("debug", "info", "warn", "warning", "error", "critical"):
            problems.append(f"LOG_LEVEL={get('LOG_LEVEL')!r}: expected debug, info, warn, error or critical")
        suffix = get("MIGRATIONS_FILE_NAME_SUFFIX")
        electric_host = get("ELECTRIC_HOST")
        if not electric_host or any(ch.isspace() or ch in "'\\" for ch in electric_host):
            problems.append(f"ELECTRIC_HOST={electric_host!r}: expected a host name or address")

        config = cls(
            connectors=connectors,
            electric_host=electric_host,
            postgres_replication_port=port("POSTGRES_REPLICATION_PORT"),
            publication=identifier("POSTGRES_PUBLICATION"),
            slot=identifier("POSTGRES_SLOT"),
            websocket_port=port("WEBSOCKET_PORT"),
            status_port=port("STATUS_PORT"),
            listen_host=listen_host,
            postgres_replication_tls=replication_tls,
            postgres_replication_sslrootcert=sslrootcert,
            websocket_tls=tls_pair("WEBSOCKET"),
            status_tls=tls_pair("STATUS"),
            data_dir=get("ELECTRIC_DATA_DIR"),
            offset_storage_file=get("OFFSET_STORAGE_FILE"),
            migrations_dir=get("MIGRATIONS_DIR"),
            migrations_file_name_suffix=suffix,
            auth_signing_key=key,
            auth_signing_iss=iss,
            api_token=api_token,
            global_cluster_id=get("GLOBAL_CLUSTER_ID"),
            instance_id=get("ELECTRIC_INSTANCE_ID"),
            regional_id=get("ELECTRIC_REGIONAL_ID"),
            log_format=log_format,
            log_level="warn" if log_level == "warning" else log_level,
            vaxine_host=get("VAXINE_HOST"),
            vaxine_api_port=port("VAXINE_API_PORT"),
            vaxine_replication_port=port("VAXINE_REPLICATION_PORT"),
            vaxine_connection_timeout_ms=positive_int("VAXINE_CONNECTION_TIMEOUT"),
        )
        listeners = {}
        for name, number in (("STATUS_PORT", config.status_port),
                             ("WEBSOCKET_PORT", config.websocket_port),
                             ("POSTGRES_REPLICATION_PORT", config.postgres_replication_port)):
            if number:
                listeners.setdefault(number, []).append(name)
        for number, names in sorted(listeners.items()):
            if len(names) > 1:
                problems.append(f"{' and '.join(names)} share port {number}: each listener needs its own port")
        if (sslrootcert is not None and replication_tls is not None and electric_host
                and not listener_tls.names_host(replication_tls.cert_file, electric_host)):
            problems.append(
                f"POSTGRES_REPLICATION_TLS_CERT_FILE={replication_tls.cert_file!r}: the certificate is not valid for "
                f"ELECTRIC_HOST={electric_host!r}, and with POSTGRES_REPLICATION_SSLROOTCERT set the subscriptions "
                "verify it (sslmode=verify-full)")
        slots = {}
        for c in config.connectors:
            slots.setdefault((c.host, c.port, config.slot_for(c)), []).append(c.name)
        for (host, number, slot), names in sorted(slots.items()):
            if len(names) > 1:
                problems.append(
                    f"CONNECTORS: {' and '.join(names)} are databases of one server ({host}:{number}) and would "
                    f"share replication slot {slot!r}: give each its own with ?slot=<name> in its URL"
                )
        if problems:
            raise ConfigError(problems)
        return config


def _shown_default(name: str) -> str:
    default = VARIABLES[name][0]
    if default is None:
        return "unset"
    return default if default else '""'


def environment_help(width: int = 79) -> str:
    """The environment variables with defaults, for `twistd electric --help`."""
    import textwrap

    lines = ["Environment variables (all optional):", ""]
    for name, (_default, text) in VARIABLES.items():
        lines.append(f"  {name} (default: {_shown_default(name)})")
        lines += textwrap.wrap(text, width, initial_indent="      ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def environment_markdown() -> str:
    """The same as a Markdown table, pasted into README.md (a test keeps them equal)."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name, (_default, text) in VARIABLES.items():
        default = _shown_default(name)
        shown = "unset" if default == "unset" else f"`{default}`"
        text = text.replace("|", "\\|")
        rows.append(f"| `{name}` | {shown} | {text} |")
    return "\n".join(rows) + "\n"
