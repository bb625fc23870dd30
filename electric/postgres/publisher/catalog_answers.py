"""
What a stock PostgreSQL 15 subscriber asks port 5433, and what we answer.

A subscriber never sends free-form SQL: libpq walreceiver, tablesync and
subscriptioncmds each build a handful of fixed statements (and replication
commands) with names and OIDs pasted in.  We recognise exactly those shapes
and answer them from the schema registry, because pretending to run general
SQL would either lie or need a real catalog.  Everything else is refused
with a clear ErrorResponse so a subscriber (or a curious human with psql)
sees why, and the connection stays usable.

Pure module: text in, `Command` / `ResultSet` out.  The publisher session
turns them into protocol messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from electric.postgres.protocol import types as pgtypes
from electric.postgres.protocol.lsn import LSNError, parse_lsn

# SQLSTATEs used in answers.
SYNTAX_ERROR = "42601"
FEATURE_NOT_SUPPORTED = "0A000"
UNDEFINED_OBJECT = "42704"
UNDEFINED_TABLE = "42P01"
UNDEFINED_COLUMN = "42703"
IN_FAILED_TRANSACTION = "25P02"
OBJECT_IN_USE = "55006"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"


class QueryError(Exception):
    """A query we refuse: becomes ErrorResponse(ERROR, sqlstate, message)."""

    def __init__(self, sqlstate: str, message: str):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


# ---------------------------------------------------------------------------
# Normalisation and lexing


def normalize(query: str) -> str:
    """
    Collapse whitespace outside quotes, drop trailing NULs / one ';'.

    The subscriber's statements carry newlines and runs of spaces that are
    an accident of how the C code concatenates them; matching on the
    collapsed text keeps the recognisers readable and tolerant of those
    differences between minor versions, while quoted names stay exact.
    """
    text = query.rstrip("\x00").strip()
    if text.endswith(";"):
        text = text[:-1].rstrip()
    out: List[str] = []
    quote: Optional[str] = None
    pending_space = False
    for ch in text:
        if quote is not None:
            out.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch.isspace():
            pending_space = True
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        out.append(ch)
        if ch in ("'", '"'):
            quote = ch
    return "".join(out)


_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<lsn>[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?![\w/])
    | (?P<estr>[Ee]'(?:[^'\\]|''|\\.)*')
    | (?P<str>'(?:[^']|'')*')
    | (?P<qident>"(?:[^"]|"")*")
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<num>[0-9]+)
    | (?P<punct>[(),.=*])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # lsn, str, ident, word, num, punct
    value: str

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.value.upper() in words


def tokenize(text: str) -> List[Token]:
    """Split a replication command / small SQL fragment into tokens; QueryError on junk."""
    tokens: List[Token] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise QueryError(SYNTAX_ERROR, f"syntax error at or near {text[pos:pos + 20].strip()!r}")
        kind = m.lastgroup
        raw = m.group(kind)
        if kind == "str":
            tokens.append(Token("str", raw[1:-1].replace("''", "'")))
        elif kind == "estr":
            tokens.append(Token("str", _unescape_e(raw[2:-1])))
        elif kind == "qident":
            tokens.append(Token("ident", raw[1:-1].replace('""', '"')))
        elif kind == "word":
            tokens.append(Token("word", raw))
        else:
            tokens.append(Token(kind, raw))
        pos = m.end()
    return tokens


def _unescape_e(body: str) -> str:
    out: List[str] = []
    i = 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(simple.get(nxt, nxt))
            i += 2
        elif ch == "'" and body[i + 1:i + 2] == "'":
            out.append("'")
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def name_of(token: Token) -> str:
    """An identifier token's name: quoted names exact, bare ones folded to lower case."""
    if token.kind == "ident":
        return token.value
    if token.kind == "word":
        return token.value.lower()
    raise QueryError(SYNTAX_ERROR, f"expected a name, got {token.value!r}")


def quote_ident(name: str) -> str:
    """Quote like Postgres's quote_identifier: only when needed."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) and name.upper() not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


_RESERVED = frozenset(
    "ALL ANALYSE ANALYZE AND ANY ARRAY AS ASC ASYMMETRIC BOTH CASE CAST CHECK COLLATE COLUMN "
    "CONSTRAINT CREATE CURRENT_CATALOG CURRENT_DATE CURRENT_ROLE CURRENT_TIME CURRENT_TIMESTAMP "
    "CURRENT_USER DEFAULT DEFERRABLE DESC DISTINCT DO ELSE END EXCEPT FALSE FETCH FOR FOREIGN FROM "
    "GRANT GROUP HAVING IN INITIALLY INTERSECT INTO LATERAL LEADING LIMIT LOCALTIME LOCALTIMESTAMP "
    "NOT NULL OFFSET ON ONLY OR ORDER PLACING PRIMARY REFERENCES RETURNING SELECT SESSION_USER "
    "SOME SYMMETRIC TABLE THEN TO TRAILING TRUE UNION UNIQUE USER USING VARIADIC WHEN WHERE WINDOW WITH".split()
)


# ---------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class EmptyQuery:
    pass


@dataclass(frozen=True)
class SetConfig:
    """`SELECT pg_catalog.set_config('search_path', '', false)`."""


@dataclass(frozen=True)
class PublicationCheck:
    publications: Tuple[str, ...]


@dataclass(frozen=True)
class TableList:
    publications: Tuple[str, ...]
    with_attnames: bool


@dataclass(frozen=True)
class IdentifySystem:
    pass


@dataclass(frozen=True)
class CreateSlot:
    name: str
    snapshot: str  # "nothing", "use" or "export"
    two_phase: bool = False
    temporary: bool = False


@dataclass(frozen=True)
class DropSlot:
    name: str


@dataclass(frozen=True)
class Begin:
    pass


@dataclass(frozen=True)
class Commit:
    pass


@dataclass(frozen=True)
class Rollback:
    pass


@dataclass(frozen=True)
class RelationInfo:
    schema: str
    table: str


@dataclass(frozen=True)
class ColumnList:
    relid: int
    publications: Tuple[str, ...]


@dataclass(frozen=True)
class Attributes:
    relid: int
    with_attnum: bool  # PG15 form puts a.attnum first; PG14 omits it


@dataclass(frozen=True)
class RowFilter:
    relid: int
    publications: Tuple[str, ...]


@dataclass(frozen=True)
class CopyTable:
    schema: str
    table: str
    columns: Optional[Tuple[str, ...]]  # None: every column


@dataclass(frozen=True)
class StartReplication:
    slot: str
    lsn: int
    options: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def publications(self) -> Tuple[str, ...]:
        raw = self.options.get("publication_names", "")
        return tuple(split_identifier_list(raw))

    @property
    def proto_version(self) -> int:
        try:
            return int(self.options.get("proto_version", "1"))
        except ValueError:
            raise QueryError(SYNTAX_ERROR, f"invalid proto_version {self.options.get('proto_version')!r}") from None


Command = object  # one of the dataclasses above


def split_identifier_list(text: str) -> List[str]:
    """`"a","b"` / `a, b` (pgoutput's publication_names value) → names."""
    names: List[str] = []
    if not text.strip():
        return names
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text) and text[pos] == '"':
            end = pos + 1
            buf = []
            while True:
                if end >= len(text):
                    raise QueryError(SYNTAX_ERROR, f"unterminated quoted name in {text!r}")
                if text[end] == '"':
                    if text[end + 1:end + 2] == '"':
                        buf.append('"')
                        end += 2
                        continue
                    end += 1
                    break
                buf.append(text[end])
                end += 1
            names.append("".join(buf))
            pos = end
        else:
            end = pos
            while end < len(text) and text[end] != "," and not text[end].isspace():
                end += 1
            word = text[pos:end]
            if not word:
                raise QueryError(SYNTAX_ERROR, f"empty name in {text!r}")
            names.append(word.lower())
            pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return names
        if text[pos] != ",":
            raise QueryError(SYNTAX_ERROR, f"expected ',' in name list {text!r}")
        pos += 1


# SQL shapes, matched against normalize()d text, case-insensitively.
_LIT = r"(?:[Ee]?'(?:[^'\\]|''|\\.)*')"
_LIT_LIST = rf"({_LIT}(?:\s*,\s*{_LIT})*)"

_SET_CONFIG = re.compile(r"SELECT pg_catalog\.set_config\('search_path', '', false\)\Z", re.I)
_PUB_CHECK = re.compile(
    rf"SELECT t\.pubname FROM pg_catalog\.pg_publication t WHERE t\.pubname IN \({_LIT_LIST}\)\Z", re.I
)
_TABLE_LIST = re.compile(
    r"SELECT DISTINCT t\.schemaname, t\.tablename ?(, ?t\.attnames )?FROM pg_catalog\.pg_publication_tables t"
    rf" WHERE t\.pubname IN \({_LIT_LIST}\)\Z",
    re.I,
)
_RELATION = re.compile(
    r"SELECT c\.oid, c\.relreplident, c\.relkind FROM pg_catalog\.pg_class c INNER JOIN"
    r" pg_catalog\.pg_namespace n ON \(c\.relnamespace = n\.oid\)"
    rf" WHERE n\.nspname = ({_LIT}) AND c\.relname = ({_LIT})\Z",
    re.I,
)
_COLUMN_LIST = re.compile(
    r"SELECT DISTINCT \(CASE WHEN \(array_length\(gpt\.attrs, 1\) = c\.relnatts\) THEN NULL ELSE gpt\.attrs END\)"
    r" FROM pg_publication p, LATERAL pg_get_publication_tables\(p\.pubname\) gpt, pg_class c"
    rf" WHERE gpt\.relid = (\d+) AND c\.oid = gpt\.relid AND p\.pubname IN \( ?{_LIT_LIST} ?\)\Z",
    re.I,
)
_ATTRIBUTES = re.compile(
    r"SELECT (a\.attnum, )?a\.attname, a\.atttypid, a\.attnum = ANY\(i\.indkey\)"
    r" FROM pg_catalog\.pg_attribute a LEFT JOIN pg_catalog\.pg_index i"
    r" ON \(i\.indexrelid = pg_get_replica_identity_index\((\d+)\)\)"
    r" WHERE a\.attnum > 0::pg_catalog\.int2 AND NOT a\.attisdropped (?:AND a\.attgenerated = '' )?"
    r"AND a\.attrelid = (\d+) ORDER BY a\.attnum\Z",
    re.I,
)
_ROW_FILTER = re.compile(
    r"SELECT DISTINCT pg_get_expr\(gpt\.qual, gpt\.relid\)"
    r" FROM pg_publication p, LATERAL pg_get_publication_tables\(p\.pubname\) gpt"
    rf" WHERE gpt\.relid = (\d+) AND p\.pubname IN \( ?{_LIT_LIST} ?\)\Z",
    re.I,
)


def _literals(text: str) -> Tuple[str, ...]:
    return tuple(t.value for t in tokenize(text) if t.kind == "str")


def parse(query: str) -> Command:
    """Recognise one simple-query string; QueryError (with SQLSTATE) if we do not serve it."""
    text = normalize(query)
    if not text:
        return EmptyQuery()
    first = text.split(" ", 1)[0].upper()

    if first == "SELECT":
        return _parse_select(text)
    if first == "IDENTIFY_SYSTEM":
        if text.upper() != "IDENTIFY_SYSTEM":
            raise QueryError(SYNTAX_ERROR, "IDENTIFY_SYSTEM takes no arguments")
        return IdentifySystem()
    if first == "CREATE_REPLICATION_SLOT":
        return _parse_create_slot(tokenize(text)[1:])
    if first == "DROP_REPLICATION_SLOT":
        return _parse_drop_slot(tokenize(text)[1:])
    if first == "START_REPLICATION":
        return _parse_start(tokenize(text)[1:])
    if first in ("BEGIN", "START"):
        if first == "START" and not text.upper().startswith("START TRANSACTION"):
            raise QueryError(SYNTAX_ERROR, f"syntax error at or near {text.split(' ', 1)[0]!r}")
        return Begin()
    if first in ("COMMIT", "END"):
        return Commit()
    if first in ("ROLLBACK", "ABORT"):
        return Rollback()
    if first == "COPY":
        return _parse_copy(text)
    raise QueryError(
        FEATURE_NOT_SUPPORTED,
        f"Electric's replication port does not support {first!r} statements"
        " (it answers only what a PostgreSQL subscriber sends)",
    )


def _parse_select(text: str) -> Command:
    if _SET_CONFIG.match(text):
        return SetConfig()
    m = _PUB_CHECK.match(text)
    if m:
        return PublicationCheck(_literals(m.group(1)))
    m = _TABLE_LIST.match(text)
    if m:
        return TableList(_literals(m.group(2)), with_attnames=m.group(1) is not None)
    m = _RELATION.match(text)
    if m:
        return RelationInfo(_literals(m.group(1))[0], _literals(m.group(2))[0])
    m = _COLUMN_LIST.match(text)
    if m:
        return ColumnList(int(m.group(1)), _literals(m.group(2)))
    m = _ATTRIBUTES.match(text)
    if m:
        if m.group(2) != m.group(3):
            raise QueryError(FEATURE_NOT_SUPPORTED, "attribute query names two different relations")
        return Attributes(int(m.group(3)), with_attnum=m.group(1) is not None)
    m = _ROW_FILTER.match(text)
    if m:
        return RowFilter(int(m.group(1)), _literals(m.group(2)))
    raise QueryError(
        FEATURE_NOT_SUPPORTED,
        "Electric's replication port answers only the catalog queries a PostgreSQL 15 subscriber sends;"
        f" this SELECT is not one of them: {text[:200]}",
    )


def _expect_end(tokens: Sequence[Token], i: int, what: str) -> None:
    if i != len(tokens):
        raise QueryError(SYNTAX_ERROR, f"syntax error in {what} at or near {tokens[i].value!r}")


def _parse_create_slot(tokens: List[Token]) -> CreateSlot:
    if not tokens:
        raise QueryError(SYNTAX_ERROR, "CREATE_REPLICATION_SLOT needs a slot name")
    name = name_of(tokens[0])
    i = 1
    temporary = False
    if i < len(tokens) and tokens[i].is_word("TEMPORARY"):
        temporary = True
        i += 1
    if i >= len(tokens) or not tokens[i].is_word("LOGICAL"):
        raise QueryError(FEATURE_NOT_SUPPORTED, "Electric serves only LOGICAL replication slots")
    i += 1
    if i >= len(tokens):
        raise QueryError(SYNTAX_ERROR, "CREATE_REPLICATION_SLOT needs an output plugin")
    plugin = name_of(tokens[i])
    if plugin != "pgoutput":
        raise QueryError(FEATURE_NOT_SUPPORTED, f'output plugin "{plugin}" is not supported, only "pgoutput"')
    i += 1
    snapshot = "export"
    two_phase = False
    if i < len(tokens) and tokens[i].kind == "punct" and tokens[i].value == "(":
        # PG15 syntax: (option [value], ...)
        i += 1
        while True:
            if i >= len(tokens):
                raise QueryError(SYNTAX_ERROR, "unterminated option list in CREATE_REPLICATION_SLOT")
            opt = name_of(tokens[i]).lower()
            i += 1
            value: Optional[str] = None
            if i < len(tokens) and tokens[i].kind in ("str", "word", "ident", "num"):
                value = tokens[i].value
                i += 1
            if opt == "snapshot":
                if value not in ("nothing", "use", "export"):
                    raise QueryError(SYNTAX_ERROR, f"unrecognized value for CREATE_REPLICATION_SLOT option \"snapshot\": {value!r}")
                snapshot = value
            elif opt == "two_phase":
                two_phase = value is None or value.lower() in ("true", "on", "1")
            elif opt == "reserve_wal":
                pass
            else:
                raise QueryError(SYNTAX_ERROR, f'unrecognized option "{opt}" in CREATE_REPLICATION_SLOT')
            if i < len(tokens) and tokens[i].value == ",":
                i += 1
                continue
            if i < len(tokens) and tokens[i].value == ")":
                i += 1
                break
            raise QueryError(SYNTAX_ERROR, "malformed option list in CREATE_REPLICATION_SLOT")
    else:
        # Pre-15 syntax: [TWO_PHASE] EXPORT_SNAPSHOT | NOEXPORT_SNAPSHOT | USE_SNAPSHOT
        while i < len(tokens):
            t = tokens[i]
            if t.is_word("TWO_PHASE"):
                two_phase = True
            elif t.is_word("EXPORT_SNAPSHOT"):
                snapshot = "export"
            elif t.is_word("NOEXPORT_SNAPSHOT"):
                snapshot = "nothing"
            elif t.is_word("USE_SNAPSHOT"):
                snapshot = "use"
            elif t.is_word("RESERVE_WAL"):
                pass
            else:
                raise QueryError(SYNTAX_ERROR, f"syntax error in CREATE_REPLICATION_SLOT at or near {t.value!r}")
            i += 1
    _expect_end(tokens, i, "CREATE_REPLICATION_SLOT")
    return CreateSlot(name, snapshot, two_phase, temporary)


def _parse_drop_slot(tokens: List[Token]) -> DropSlot:
    if not tokens:
        raise QueryError(SYNTAX_ERROR, "DROP_REPLICATION_SLOT needs a slot name")
    name = name_of(tokens[0])
    i = 1
    if i < len(tokens) and tokens[i].is_word("WAIT"):
        i += 1
    _expect_end(tokens, i, "DROP_REPLICATION_SLOT")
    return DropSlot(name)


def _parse_start(tokens: List[Token]) -> StartReplication:
    i = 0
    if i < len(tokens) and tokens[i].is_word("SLOT"):
        i += 1
    else:
        raise QueryError(FEATURE_NOT_SUPPORTED, "START_REPLICATION needs SLOT <name> LOGICAL (physical replication is not served)")
    if i >= len(tokens):
        raise QueryError(SYNTAX_ERROR, "START_REPLICATION SLOT needs a slot name")
    slot = name_of(tokens[i])
    i += 1
    if i >= len(tokens) or not tokens[i].is_word("LOGICAL"):
        raise QueryError(FEATURE_NOT_SUPPORTED, "Electric serves only LOGICAL replication")
    i += 1
    if i >= len(tokens) or tokens[i].kind != "lsn":
        got = tokens[i].value if i < len(tokens) else "end of input"
        raise QueryError(SYNTAX_ERROR, f"START_REPLICATION needs a start LSN X/Y, got {got!r}")
    try:
        lsn = parse_lsn(tokens[i].value)
    except LSNError as e:
        raise QueryError(SYNTAX_ERROR, str(e)) from None
    i += 1
    options: Dict[str, str] = {}
    if i < len(tokens):
        if tokens[i].value != "(":
            raise QueryError(SYNTAX_ERROR, f"syntax error in START_REPLICATION at or near {tokens[i].value!r}")
        i += 1
        while True:
            if i >= len(tokens):
                raise QueryError(SYNTAX_ERROR, "unterminated option list in START_REPLICATION")
            if tokens[i].kind not in ("word", "ident"):
                raise QueryError(SYNTAX_ERROR, f"expected an option name, got {tokens[i].value!r}")
            key = name_of(tokens[i])
            i += 1
            value = ""
            if i < len(tokens) and tokens[i].kind in ("str", "word", "num", "ident"):
                value = tokens[i].value
                i += 1
            options[key] = value
            if i < len(tokens) and tokens[i].value == ",":
                i += 1
                continue
            if i < len(tokens) and tokens[i].value == ")":
                i += 1
                break
            raise QueryError(SYNTAX_ERROR, "malformed option list in START_REPLICATION")
    _expect_end(tokens, i, "START_REPLICATION")
    start = StartReplication(slot, lsn, options)
    if start.proto_version not in (1, 2, 3, 4):
        raise QueryError(FEATURE_NOT_SUPPORTED, f"proto_version {start.proto_version} is not supported")
    for key in options:
        if key not in ("proto_version", "publication_names", "binary", "messages", "streaming", "two_phase"):
            raise QueryError(SYNTAX_ERROR, f"unrecognized pgoutput option: {key}")
    return start


def _parse_copy(text: str) -> CopyTable:
    tokens = tokenize(text)[1:]
    i = 0

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise QueryError(
                FEATURE_NOT_SUPPORTED,
                f"Electric serves only COPY <schema>.<table> (<columns>) TO STDOUT ({what}): {text[:200]}",
            )

    need(i < len(tokens) and tokens[i].kind in ("word", "ident"), "a table name")
    first = name_of(tokens[i])
    i += 1
    schema, table = "public", first
    if i < len(tokens) and tokens[i].value == ".":
        i += 1
        need(i < len(tokens) and tokens[i].kind in ("word", "ident"), "a table name after the schema")
        schema, table = first, name_of(tokens[i])
        i += 1
    columns: Optional[List[str]] = None
    if i < len(tokens) and tokens[i].value == "(":
        i += 1
        columns = []
        while i < len(tokens) and tokens[i].value != ")":
            need(tokens[i].kind in ("word", "ident"), "a column name")
            columns.append(name_of(tokens[i]))
            i += 1
            if i < len(tokens) and tokens[i].value == ",":
                i += 1
        need(i < len(tokens), "a closing parenthesis")
        i += 1
    need(i < len(tokens) and tokens[i].is_word("TO"), "TO STDOUT")
    i += 1
    need(i < len(tokens) and tokens[i].is_word("STDOUT"), "TO STDOUT")
    i += 1
    need(i == len(tokens), "no options")
    return CopyTable(schema, table, tuple(columns) if columns is not None else None)


# ---------------------------------------------------------------------------
# Answers


@dataclass(frozen=True)
class ResultColumn:
    name: str
    type_oid: int

    @property
    def typlen(self) -> int:
        return pgtypes.typlen_of(self.type_oid)


@dataclass(frozen=True)
class ResultSet:
    columns: Tuple[ResultColumn, ...]
    rows: Tuple[Tuple[Optional[str], ...], ...]
    tag: str


def _select(columns: Sequence[Tuple[str, int]], rows: Sequence[Sequence[Optional[str]]]) -> ResultSet:
    rows = tuple(tuple(r) for r in rows)
    return ResultSet(tuple(ResultColumn(n, o) for n, o in columns), rows, f"SELECT {len(rows)}")


def set_config_result() -> ResultSet:
    return _select([("set_config", pgtypes.TEXT)], [("",)])


def check_publications(requested: Sequence[str], known: Sequence[str]) -> None:
    """Refuse unknown publication names, naming the first one."""
    for name in requested:
        if name not in known:
            raise QueryError(UNDEFINED_OBJECT, f'publication "{name}" does not exist')


def publication_check_result(requested: Sequence[str], known: Sequence[str]) -> ResultSet:
    check_publications(requested, known)
    return _select([("pubname", pgtypes.NAME)], [(p,) for p in dict.fromkeys(requested)])


def array_literal(items: Sequence[str]) -> str:
    """Postgres array text for names, quoting elements exactly when Postgres would."""
    out = []
    for item in items:
        if item == "" or item.upper() == "NULL" or re.search(r'[\s{},"\\]', item):
            out.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(item)
    return "{" + ",".join(out) + "}"


def table_list_result(tables, with_attnames: bool) -> ResultSet:
    """`tables`: the database's own `Table`s (schema, name, columns), in registry order."""
    columns = [("schemaname", pgtypes.NAME), ("tablename", pgtypes.NAME)]
    if with_attnames:
        columns.append(("attnames", pgtypes.NAME_ARRAY))
    rows = []
    for t in tables:
        row = [t.schema, t.name]
        if with_attnames:
            row.append(array_literal([c.name for c in t.columns]))
        rows.append(row)
    return _select(columns, rows)


def identify_system_result(system_id: str, xlogpos: str, dbname: Optional[str]) -> ResultSet:
    rs = _select(
        [("systemid", pgtypes.TEXT), ("timeline", pgtypes.INT4), ("xlogpos", pgtypes.TEXT), ("dbname", pgtypes.TEXT)],
        [(system_id, "1", xlogpos, dbname)],
    )
    return ResultSet(rs.columns, rs.rows, "IDENTIFY_SYSTEM")


def create_slot_result(name: str, consistent_point: str) -> ResultSet:
    rs = _select(
        [("slot_name", pgtypes.TEXT), ("consistent_point", pgtypes.TEXT),
         ("snapshot_name", pgtypes.TEXT), ("output_plugin", pgtypes.TEXT)],
        [(name, consistent_point, None, "pgoutput")],
    )
    return ResultSet(rs.columns, rs.rows, "CREATE_REPLICATION_SLOT")


def relation_info_result(relation_id: Optional[int], replica_identity: str = "d") -> ResultSet:
    rows = [] if relation_id is None else [(str(relation_id), replica_identity, "r")]
    return _select([("oid", pgtypes.OID), ("relreplident", pgtypes.CHAR), ("relkind", pgtypes.CHAR)], rows)


def column_list_result() -> ResultSet:
    # NULL: the publication carries every column (no column list).
    return _select([("attrs", pgtypes.INT2VECTOR)], [(None,)])


def attributes_result(table, with_attnum: bool) -> ResultSet:
    """`table`: the database's own definition, or None (unknown relation → no rows)."""
    columns = [("attname", pgtypes.NAME), ("atttypid", pgtypes.OID), ("?column?", pgtypes.BOOL)]
    if with_attnum:
        columns.insert(0, ("attnum", pgtypes.INT2))
    rows = []
    if table is not None:
        keys = set(table.primary_key)
        for n, col in enumerate(table.columns, start=1):
            row = [col.name, str(col.type_oid), "t" if col.name in keys else "f"]
            if with_attnum:
                row.insert(0, str(n))
            rows.append(row)
    return _select(columns, rows)


def row_filter_result() -> ResultSet:
    # NULL: no row filter.
    return _select([("pg_get_expr", pgtypes.TEXT)], [(None,)])


def copy_columns(table, requested: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The columns a COPY serves, in the requested order; QueryError for unknown ones."""
    if requested is None:
        return tuple(c.name for c in table.columns)
    known = set(c.name for c in table.columns)
    for name in requested:
        if name not in known:
            raise QueryError(
                UNDEFINED_COLUMN, f'column "{name}" of relation "{table.name}" does not exist'
            )
    return tuple(requested)
