"""
The value validator against a real PostgreSQL 15, value by value.

For every type Electric carries (with type modifiers, arrays and ranges) a
seeded generator mutates a set of valid and invalid seed values and the test
compares, for each generated value, `electric.postgres.protocol.values` with
the server:

* the validator accepts  ->  Postgres must accept;
* the validator refuses  ->  Postgres must refuse;
* NotPortable (a spelling whose meaning depends on each database's settings,
  refused on purpose) is only allowed for the types listed in
  NOT_PORTABLE_TYPES, and asserts nothing about this one server.

"Postgres accepts" means what the apply worker of a subscription does with a
replicated value: call the type's input function with the column's type
modifier (``int4in(text)``, ``varchar(text, oid, 68)``, ``array_in(text,
element oid, typmod)``).  ``SELECT $1::varchar(64)`` is not the same thing:
an explicit cast silently truncates (varchar, bit) where the input function
refuses.

Seeds follow tests/seeds.py: a fixed seed and a fresh one each run (or
only ELECTRIC_TEST_SEED), named on failure with the command that reruns it.
The count per type is ELECTRIC_VALUES_PER_TYPE (default 1500).
"""

from __future__ import annotations

import os
import random
import sys

import psycopg2
from twisted.trial import unittest

from electric.postgres.protocol import values as V
from tests.pgcluster import shared_cluster
from tests.seeds import seeded

PER_TYPE = int(os.environ.get("ELECTRIC_VALUES_PER_TYPE", "1500"))

# Types whose validator may refuse a spelling as not portable.
NOT_PORTABLE_TYPES = {
    "date", "time", "timetz", "timestamp", "timestamptz", "interval", "daterange", "tsrange", "tstzrange",
    "money", "regclass", "float4", "float8", "jsonb", "json", "tsvector", "tsquery",
    "_date", "_timestamptz", "_interval",
}


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


# (type name, typmod, seeds): valid and invalid values near every rule
SPECS = [
    ("int2", -1, ["12", "-32768", "32767", " +5 ", "0" * 33 + "12", "-0", "1.5", ""]),
    ("int4", -1, ["12", "-2147483648", "2147483647", " +5 ", "notanint", "2147483648"]),
    ("int8", -1, ["-9223372036854775808", "9223372036854775807", " +5 ", "9223372036854775808"]),
    ("oid", -1, ["-2147483648", "4294967295", " +5 ", "18446744073709551615", "-1", "4294967296"]),
    ("xid", -1, ["12", "abc", "0x10"]),
    ("xid8", -1, ["12", "x", "-1"]),
    ("bool", -1, ["true", "false", "yes", "no", "on", "off", " t ", "1", "0", "of"]),
    ("float4", -1, ["1.5", "3.4028235e38", "3.40282356779733661637539395458142568448e38", "1.4e-45",
                    "7.006492321624085354618647916449580656402e-46", "NaN", "Infinity", "0x1p-149", "1e39", "1e-46"]),
    ("float8", -1, ["1.5", "-1e308", "1.7976931348623157e308", "1.7976931348623158e308", "4.9e-324",
                    "2.4703282292062328e-324", "NaN", "-Infinity", "inf", "0x1.fffffffffffff8p1023", " 1e5 ",
                    "nan(123)", ".5", "5.", "1e-400"]),
    ("numeric", -1, ["1.5", "-1e131071", "9.99e131071", "1e-16383", " NaN ", "+.5", "1e 5", "0e-16384",
                     "-0.000", "Infinity", "-inf"]),
    ("numeric", numeric_typmod(5, 2), ["999.994", "999.995", "-999.99", "0.005", "0.0049", "1e2", "1e-20000",
                                       "NaN", "inf"]),
    ("numeric", numeric_typmod(3, -2), ["99949", "99950", "-99949.99", "49", "50", "0"]),
    ("numeric", numeric_typmod(2, 3), ["0.0994", "0.0995", "0.01", "0.1", "-0.0005"]),
    ("money", -1, ["12", "-92233720368547758", "92233720368547758", "92233720368547759", " 5 "]),
    ("text", -1, ["anything", ""]),
    ("name", -1, ["a", ""]),
    ("char", -1, ["a", "", "\\101", "ab"]),
    ("varchar", 5 + 4, ["abcde", "abc  ", "abcdef", "abcde   ", "éééééé", "ab"]),
    ("bpchar", 3 + 4, ["abc", "abc  ", "a", "abcd"]),
    ("bytea", -1, ["\\x0a1b", "\\x", "\\x 0a 1b ", "abc\\\\def", "a\\101b", "\\377", "\\400", "plain"]),
    ("uuid", -1, ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}",
                  "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", "A0EEBC999C0B4EF8BB6D6BB9BD380A11"]),
    ("json", -1, ['{"a": [1, 2.5e3, -0, true, null, "x\\u0000\\ud800"]}', "[]", "{}", '"\\/\\b"', " 12 ",
                  '[{"":{}}]', "-1.0E+2"]),
    ("jsonb", -1, ['{"a": [1, 2.5e3, -0, true, null, "x\\ud83d\\ude00"]}', "[]", "{}", '"\\/\\b"', " 12 ",
                   '[{"":{}}]', "1e-16383", '"\\u0000"']),
    ("bit", 4, ["1010", "B1010", "xA", "XF", "101", "10101", "x1F"]),
    ("varbit", 6, ["1010", "B1010", "xA", "", "b", "101010", "1010101"]),
    ("inet", -1, ["192.168.1.1", "10.1/16", "1.2.3.4/32", "::1", "fe80::1/64", "::ffff:1.2.3.4",
                  "::ffff:1.2.3.4/100", "1:2:3:4:5:6:7:8", "1.2.3.4.", "10/8", "1:2:3:4:5:6:1.2.3.4"]),
    ("cidr", -1, ["192.168.1.0/24", "10", "10.1", "128.1", "224", "0x0a", "0xa0b", "::/0", "fe80::/64",
                  "::ffff:1.2.3.0/120", "192.168.1.1", "1.2.3.4/32", "0xa0b0c0d0/28"]),
    ("macaddr", -1, ["08:00:2b:01:02:03", "08-00-2b-01-02-03", "08002b:010203", "08002b-010203", "0800.2b01.0203",
                     "0800-2b01-0203", "08002b010203", " 8:0:2b:1:2:3 ", "0x8:0:2b:1:2:3", "100:0:0:0:0:0"]),
    ("macaddr8", -1, ["08:00:2b:01:02:03:04:05", "08-00-2b-01-02-03-04-05", "08002b0102030405",
                      "0800.2b01.0203.0405", "08:00:2b:01:02:03", " 08:00:2b:01:02:03 ", "08:00:2b:01:02:03:0"]),
    ("point", -1, ["(1,2)", "1,2", " ( 1.5 , -2e3 ) ", "(NaN,Infinity)", "(0x1p3,2)"]),
    ("lseg", -1, ["[(1,2),(3,4)]", "((1,2),(3,4))", "(1,2),(3,4)", "1,2,3,4"]),
    ("box", -1, ["((1,2),(3,4))", "(1,2),(3,4)", "1,2,3,4", "( ( 1 , 2 ) , ( 3 , 4 ) )"]),
    ("path", -1, ["[(1,2),(3,4),(5,6)]", "((1,2),(3,4))", "(1,2),(3,4)", "1,2,3,4", "(1,2,3,4)", "[1,2]"]),
    ("polygon", -1, ["((1,2),(3,4),(5,6))", "(1,2),(3,4)", "1,2,3,4", "(1,2,3,4)", "(1,2)"]),
    ("line", -1, ["{1,2,3}", "{0,0,1}", "[(1,2),(3,4)]", "((1,2),(1,2))", "(1,2),(3,4)", "{1e-7,0,1}"]),
    ("circle", -1, ["<(1,2),3>", "((1,2),3)", "(1,2),3", "1,2,3", "<(1,2),-3>", "<(1,2),NaN>"]),
    ("tid", -1, ["(1,2)", "(0,0)", "(4294967295,65535)", "x(1,2)y", "(-1,2)", "(,1)", "( 1, 2)"]),
    ("int2vector", -1, ["1 2 3", " 1  -2 ", "32767 -32768", "", "1,2"]),
    ("oidvector", -1, ["1 2 3", " 1  -2 ", "4294967295", "", "1-2", "1,2"]),
    ("txid_snapshot", -1, ["10:20:12,15", "10:20:", "1:1:", "10:20:10,19", "10:20:12,12,15", " 10: 20 :"]),
    ("regclass", -1, ["12", "-", "4294967295", "4294967296", "0"]),
    ("tsvector", -1, ["a fat cat", "'a b':1,2A c:3B d:4C e:5D", "a:0", "a:16384", "a:4294967296",
                      "'it''s' x\\ y", "a:1A*", "a:1aa", "''", "a:1Dd"]),
    ("tsquery", -1, ["a & b | !c", "(a <-> b) & c:*", "a <2> b", "a:AB* & 'x y'", "!!a", "a &", "", "()",
                     "(a", "a)", "a <16385> b", "a<->b", "a <->", "! ( a | b )"]),
    ("date", -1, ["2020-01-02", "0044-03-15 BC", "2020-02-29", "4714-11-24 BC", "5874897-12-31", "infinity",
                  "-infinity", "epoch", "2020-01-02T12:34:56.789Z", "2020-01-02 24:00", "2020-01-02 12:00:00+05:30",
                  "202-01-02", " 2020-1-2 ", "2020-01-02 AD"]),
    ("timestamp", -1, ["2020-01-02 12:34:56", "2020-01-02T12:34:56.789Z", "294276-12-31 23:59:59.999999",
                       "4714-11-24 00:00:00 BC", "2020-01-02 24:00:00", "2020-01-02 23:59:60.5",
                       "2020-01-02 12:00:00+05 BC", "infinity", "2020-02-29 00:00", "2020-01-02 12:00:00.9999995"]),
    ("timestamp", 0, ["2020-01-02 12:34:56.5", "294276-12-31 23:59:59.5", "4714-11-24 00:00:00.4 BC"]),
    ("timestamptz", -1, ["2020-01-02 12:34:56+00", "2020-01-02T12:34:56.789Z", "294276-12-31 23:59:59+00",
                         "294276-12-31 23:59:59-01", "4714-11-24 00:00:00+00 BC", "4714-11-24 00:00:00-01 BC",
                         "2020-01-02 12:00:00+0530", "2020-01-02 12:00:00 UTC", "2020-01-02 12:00:00-15:59:59"]),
    ("time", -1, ["12:34:56", "23:59:60", "24:00:00", "24:00:00.0000001", "23:59:59.9999999", "1:2", "12:00:00+05",
                  "2020-01-02 12:00:00", "00:00:00.000001", "2020-01-02T12:00"]),
    ("timetz", -1, ["12:34:56+05", "24:00:00+00", "12:00:00Z", "2020-01-02 12:00:00-08", "12:00:00+15:59"]),
    ("interval", -1, ["1 day", "1day", "-1 days +02:00:00", "1 year 2 mons 3 days 04:05:06.789", "@ 1 hour ago",
                      "P1Y2M3DT4H5M6S", "PT1.5S", "1 12:00", "100:00:00", "00:00:60", "2147483647 days",
                      "178956970 years", "-178956970 years 8 mons", "9223372036854 ms", "-1 day -2:00",
                      "1.5 seconds", "2562047788 hours", "1 mon 1 month", "-2147483648 days ago", "1 ms 1 us 1 s"]),
    ("int4range", -1, ["[1,2)", "(1,2]", "empty", "(,)", "[1,)", "(,5]", "[3,1]", "(2147483647,)", "[1,2147483647]",
                       " [ 1 , 2 ) ", '["1","2")', "[1,1)", "[\\1,2]"]),
    ("int8range", -1, ["[1,9223372036854775807]", "(9223372036854775807,)", "[-9223372036854775808,0)"]),
    ("numrange", -1, ["[1.5,2.5)", "[NaN,NaN]", "[1,NaN]", "[-Infinity,Infinity]", "(,)", "[2,1]"]),
    ("daterange", -1, ["[2020-01-01,2020-02-01)", "[5874897-12-31,5874897-12-31]", "[infinity,infinity]",
                       "(-infinity,infinity)", "[2020-01-02,2020-01-01]"]),
    ("tsrange", -1, ['["2020-01-01 00:00:00","2020-01-01 01:00:00"]', "[2020-01-01T00:00,infinity)", "(,)"]),
    ("tstzrange", -1, ['["2020-01-01 00:00:00+00","2020-01-01 01:00:00+01"]', "[2020-01-01T00:00Z,infinity)"]),
    ("_int4", -1, ["{}", "{1,2,3}", "{{1,2},{3,4}}", "[0:1]={1,2}", " [1:2] = {1,2} ", '{NULL,null,"NULL"}',
                   '{ "1" , 2 }', "{{{{{{1}}}}}}", "[-1:-1]={1}", '{"\\1"}', "{1,{2}}", "{\\1}",
                   "[1:2][1:1]={{1},{2}}"]),
    ("_text", -1, ["{}", "{a,b,c}", "{{a,b},{c,d}}", '{"a b","c\\"d",NULL}', "{ a b , c }", '{"",x}', "{\\,a}"]),
    ("_varchar", 3 + 4, ['{abc,"abc  ",abcd}', "{ab , abc }"]),
    ("_numeric", numeric_typmod(5, 2), ["{1.5,999.994,NaN}", "{{1},{2}}", "{999.995}"]),
    ("_box", -1, ["{(1,2),(3,4);(5,6),(7,8)}", '{"(1,2),(3,4)"}']),
    ("_jsonb", -1, ['{"{\\"a\\":1}","[1,2]",null}', "{1,2,true}"]),
    ("_timestamptz", -1, ['{"2020-01-01 00:00:00+00",infinity,NULL}', "{2020-01-01T00:00Z}"]),
    ("_interval", -1, ['{"1 day","-1 days +02:00:00",NULL}', "{P1Y}"]),
    ("_uuid", -1, ["{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}"]),
    ("_date", -1, ["{2020-01-02,infinity}"]),
]

ALPHABET = list("0123456789abcdefxXABCDEF .,:;-+/()[]{}<>\"'\\eEnNaAiIfFtTyYpPzZ\t\n_é@*!&|")


def mutate(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 3)):
        op = rng.randint(0, 4)
        if op == 0 and chars:
            del chars[rng.randrange(len(chars))]
        elif op == 1:
            chars.insert(rng.randint(0, len(chars)), rng.choice(ALPHABET))
        elif op == 2 and chars:
            chars[rng.randrange(len(chars))] = rng.choice(ALPHABET)
        elif op == 3 and chars:
            i = rng.randrange(len(chars))
            chars.insert(i, chars[i])
        elif op == 4 and len(chars) > 1:
            i, j = rng.randrange(len(chars)), rng.randrange(len(chars))
            chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


class Oracle:
    """Calls each type's input function the way the apply worker does."""

    def __init__(self, dsn: str):
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.cur = self.conn.cursor()
        self._sql = {}

    def close(self):
        self.conn.close()

    def _statement(self, type_name: str, typmod: int) -> str:
        key = (type_name, typmod)
        if key not in self._sql:
            self.cur.execute(
                "SELECT t.typinput::regproc::text, p.pronargs, "
                "CASE WHEN t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc "
                "THEN t.typelem ELSE t.oid END "
                "FROM pg_type t JOIN pg_proc p ON p.oid = t.typinput WHERE t.typname = %s", (type_name,))
            function, nargs, ioparam = self.cur.fetchone()
            self._sql[key] = (f"SELECT {function}(%s::cstring)" if nargs == 1
                              else f"SELECT {function}(%s::cstring, {int(ioparam)}::oid, {int(typmod)})")
        return self._sql[key]

    def accepts(self, type_name: str, typmod: int, text: str):
        try:
            self.cur.execute(self._statement(type_name, typmod), (text,))
            return True, None
        except psycopg2.Error as e:
            return False, f"{e.pgcode} {e.diag.message_primary}"


class ValidatorMatchesPostgres(unittest.TestCase):
    timeout = 900

    def setUp(self):
        cluster = shared_cluster("values")
        self.oracle = Oracle(cluster.dsn)
        self.addCleanup(self.oracle.close)

    @seeded(20261126)
    def test_every_generated_value(self, rng: random.Random):
        mismatches = []
        compared = not_portable = 0
        for type_name, typmod, seeds in SPECS:
            candidates = list(seeds) + [mutate(rng, rng.choice(seeds)) for _ in range(PER_TYPE)]
            seen = set()
            for text in candidates:
                if text in seen or "\x00" in text:
                    continue
                seen.add(text)
                accepted, reason = self.oracle.accepts(type_name, typmod, text)
                try:
                    V.check(type_name, typmod, text)
                    mine, detail = True, None
                except V.NotPortable as e:
                    not_portable += 1
                    if type_name not in NOT_PORTABLE_TYPES:
                        mismatches.append(f"{type_name}({typmod}) {text!r}: NotPortable ({e}) for a type that "
                                          "has no settings-dependent spellings")
                    continue
                except V.InvalidValue as e:
                    mine, detail = False, str(e)
                compared += 1
                if mine != accepted:
                    mismatches.append(f"{type_name}({typmod}) {text!r}: postgres {'accepts' if accepted else 'refuses'}"
                                      f" ({reason}), validator {'accepts' if mine else 'refuses'} ({detail})")
        print(f"[values] compared {compared} values with PostgreSQL, {not_portable} refused as not portable",
              file=sys.stderr)
        self.assertGreater(compared, len(SPECS) * PER_TYPE // 2)
        self.assertEqual(mismatches[:30], [], f"{len(mismatches)} mismatches")
