"""
Configuration: every environment variable Electric reads, validated at once.

`Config.from_environ` turns an environment mapping into one immutable
`Config`, or raises `ConfigError` listing *every* problem (variable name, the
offending value with secrets masked, and what was expected), so an operator
fixes a broken deployment in one round instead of one variable per restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

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
    "LISTEN_HOST": ("0.0.0.0", "interface Electric's listeners bind to"),
    "ELECTRIC_DATA_DIR": ("./electric_data", "directory of the embedded hub's log and row state (used when VAXINE_HOST is unset)"),
    "OFFSET_STORAGE_FILE": ("./offset_storage_data.dat", "file keeping each subscriber's LSN <-> hub position map and client positions"),
    "MIGRATIONS_DIR": ("./migrations", "directory holding one folder per migration"),
    "MIGRATIONS_FILE_NAME_SUFFIX": ("/postgres.sql", "appended to a migration name to find its SQL file"),
    "SATELLITE_AUTH_SIGNING_KEY": (None, "HS256 key (>= 32 bytes) for client JWTs; unset = insecure auth (token is the user id)"),
    "SATELLITE_AUTH_SIGNING_ISS": (None, "required JWT issuer (needs the signing key)"),
    "GLOBAL_CLUSTER_ID": ("dev.electric-db", "cluster identifier (logging)"),
    "ELECTRIC_INSTANCE_ID": ("instance-1.region-1.dev.electric-db", "instance identifier (logging)"),
    "ELECTRIC_REGIONAL_ID": ("region-1.dev.electric-db", "server id sent to Satellite clients"),
    "VAXINE_HOST": (None, "Vaxine host; unset = embedded hub"),
    "VAXINE_API_PORT": ("8087", "Vaxine protocol-buffers API port"),
    "VAXINE_REPLICATION_PORT": ("8088", "Vaxine replication stream port"),
    "VAXINE_CONNECTION_TIMEOUT": ("5000", "Vaxine connect timeout in ms"),
}

SECRET_VARIABLES = frozenset({"SATELLITE_AUTH_SIGNING_KEY"})


def mask(value: str) -> str:
    """Show a secret's shape, never its content."""
    return f"<{len(value)} bytes hidden>"


def _mask_url_password(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def parse_connectors(text: str, problems: List[str]) -> Tuple[Connector, ...]:
    """Parse CONNECTORS, appending one message per bad entry to `problems`."""
    expected = "name=postgresql://user:password@host:port/database"
    result: List[Connector] = []
    seen = set()
    for raw in text.split(";"):
        item = raw.strip()
        if not item:
            continue
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name or not url:
            problems.append(f"CONNECTORS: entry {_mask_url_password(item)!r} is not {expected}")
            continue
        shown = _mask_url_password(url)
        if not all(ch.isalnum() or ch == "_" for ch in name):
            problems.append(f"CONNECTORS: connector name {name!r} must contain only letters, digits and _")
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
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not database or parts.username is None:
            problems.append(f"CONNECTORS: {name}: {shown!r} is not {expected} (needs user, host and database)")
            continue
        params = tuple(parse_qsl(parts.query, keep_blank_values=True))
        timeout_ms = 5000
        pdict = dict(params)
        if "timeout" in pdict:
            try:
                timeout_ms = int(pdict["timeout"])
                if timeout_ms <= 0:
                    raise ValueError
            except ValueError:
                problems.append(f"CONNECTORS: {name}: timeout={pdict['timeout']!r} is not a positive integer (ms)")
                continue
        if name in seen:
            problems.append(f"CONNECTORS: connector name {name!r} appears more than once")
            continue
        seen.add(name)
        result.append(
            Connector(
                name=name,
                host=pdict.get("host") or parts.hostname,
                port=int(pdict.get("port") or port or 5432),
                database=pdict.get("dbname") or database,
                user=pdict.get("user") or unquote(parts.username),
                password=unquote(parts.password or ""),
                params=params,
                connect_timeout_ms=timeout_ms,
            )
        )
    return tuple(sorted(result, key=lambda c: c.name))


@dataclass(frozen=True)
class Config:
    connectors: Tuple[Connector, ...] = ()
    electric_host: str = "127.0.0.1"
    postgres_replication_port: int = 5433
    publication: str = "all_tables"
    slot: str = "all_changes"
    websocket_port: int = 5133
    status_port: int = 5050
    listen_host: str = "0.0.0.0"
    data_dir: str = "./electric_data"
    offset_storage_file: str = "./offset_storage_data.dat"
    migrations_dir: str = "./migrations"
    migrations_file_name_suffix: str = "/postgres.sql"
    auth_signing_key: Optional[str] = field(default=None, repr=False)
    auth_signing_iss: Optional[str] = None
    global_cluster_id: str = "dev.electric-db"
    instance_id: str = "instance-1.region-1.dev.electric-db"
    regional_id: str = "region-1.dev.electric-db"
    vaxine_host: Optional[str] = None
    vaxine_api_port: int = 8087
    vaxine_replication_port: int = 8088
    vaxine_connection_timeout_ms: int = 5000

    @property
    def embedded_hub(self) -> bool:
        return self.vaxine_host is None

    @property
    def jwt_auth(self) -> bool:
        return self.auth_signing_key is not None

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
            try:
                n = int(value)
                if not 1 <= n <= 65535:
                    raise ValueError
                return n
            except (TypeError, ValueError):
                problems.append(f"{name}={shown(name, value)}: expected a port number from 1 to 65535")
                return 0

        def positive_int(name: str) -> int:
            value = get(name)
            try:
                n = int(value)
                if n <= 0:
                    raise ValueError
                return n
            except (TypeError, ValueError):
                problems.append(f"{name}={shown(name, value)}: expected a positive integer")
                return 0

        def identifier(name: str) -> str:
            value = get(name)
            if not value or not all(ch.isalnum() or ch == "_" for ch in value):
                problems.append(f"{name}={value!r}: expected a name of letters, digits and _")
            return value

        connectors = parse_connectors(get("CONNECTORS") or "", problems)
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
        suffix = get("MIGRATIONS_FILE_NAME_SUFFIX")
        if not suffix:
            problems.append("MIGRATIONS_FILE_NAME_SUFFIX='': expected a file name suffix such as /postgres.sql")
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
            listen_host=get("LISTEN_HOST"),
            data_dir=get("ELECTRIC_DATA_DIR"),
            offset_storage_file=get("OFFSET_STORAGE_FILE"),
            migrations_dir=get("MIGRATIONS_DIR"),
            migrations_file_name_suffix=suffix,
            auth_signing_key=key,
            auth_signing_iss=iss,
            global_cluster_id=get("GLOBAL_CLUSTER_ID"),
            instance_id=get("ELECTRIC_INSTANCE_ID"),
            regional_id=get("ELECTRIC_REGIONAL_ID"),
            vaxine_host=get("VAXINE_HOST"),
            vaxine_api_port=port("VAXINE_API_PORT"),
            vaxine_replication_port=port("VAXINE_REPLICATION_PORT"),
            vaxine_connection_timeout_ms=positive_int("VAXINE_CONNECTION_TIMEOUT"),
        )
        if problems:
            raise ConfigError(problems)
        return config
