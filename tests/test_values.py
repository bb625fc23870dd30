"""
The value validator without a database: every type Electric carries, with
type modifiers, against cases whose outcome PostgreSQL 15 was seen to give
(tests/test_values_postgres.py compares with a real server at scale).
"""

from __future__ import annotations

from twisted.trial import unittest

from electric.postgres.protocol import types
from electric.postgres.protocol import values as V
from electric.postgres.protocol.types import UnknownTypeError


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


OK, BAD, NOT_PORTABLE = "ok", "bad", "not portable"

# (type name, typmod, value, outcome)
CASES = [
    # integers: PostgreSQL 15 syntax (no underscores, no hex), exact ranges
    ("int2", -1, "32767", OK), ("int2", -1, "-32768", OK), ("int2", -1, "32768", BAD), ("int2", -1, " +5 ", OK),
    ("int2", -1, "5 x", BAD), ("int2", -1, "", BAD), ("int2", -1, "1_000", BAD), ("int2", -1, "0x10", BAD),
    ("int4", -1, "notanint", BAD), ("int4", -1, "2147483647", OK), ("int4", -1, "2147483648", BAD),
    ("int4", -1, "-2147483648", OK), ("int4", -1, "0" * 40 + "12", OK), ("int4", -1, "1.0", BAD),
    ("int4", -1, "\u0661", BAD),  # an Arabic-Indic digit is not a digit to Postgres
    ("int8", -1, "9223372036854775807", OK), ("int8", -1, "9223372036854775808", BAD),
    ("int8", -1, "-9223372036854775808", OK), ("int8", -1, "-", BAD),
    # oid: unsigned 32 bits, negative int32s wrap
    ("oid", -1, "4294967295", OK), ("oid", -1, "4294967296", BAD), ("oid", -1, "-1", OK),
    ("oid", -1, "-2147483649", BAD), ("oid", -1, "", BAD), ("oid", -1, "18446744073709551615", OK),
    # booleans: prefixes of true/false/yes/no, on/off with at least 2 letters
    ("bool", -1, "t", OK), ("bool", -1, "TRU", OK), ("bool", -1, " yes ", OK), ("bool", -1, "o", BAD),
    ("bool", -1, "of", OK), ("bool", -1, "onn", BAD), ("bool", -1, "1", OK), ("bool", -1, "2", BAD),
    ("bool", -1, "", BAD), ("bool", -1, "truee", BAD),
    # floats: glibc strtod plus Postgres's spellings; underflow to zero and overflow refused
    ("float8", -1, "NaN", OK), ("float8", -1, "-Infinity", OK), ("float8", -1, "inf", OK),
    ("float8", -1, "1e308", OK), ("float8", -1, "1e309", BAD), ("float8", -1, "4.9e-324", OK),
    ("float8", -1, "1e-400", BAD), ("float8", -1, "0e-400", OK), ("float8", -1, "0x1p-1074", OK),
    ("float8", -1, "nan(abc)", OK), ("float8", -1, "1e", BAD), ("float8", -1, " .5 ", OK), ("float8", -1, ".", BAD),
    ("float4", -1, "3.4028235e38", OK), ("float4", -1, "3.5e38", BAD), ("float4", -1, "1e-46", BAD),
    ("float4", -1, "1.4e-45", OK), ("float4", -1, "0x1.000001p-150", NOT_PORTABLE),
    # numeric: syntax, unconstrained limits, precision and scale (round half away from zero)
    ("numeric", -1, "1.5", OK), ("numeric", -1, "NaN", OK), ("numeric", -1, "-inf", OK),
    ("numeric", -1, "1e 5", OK), ("numeric", -1, "1e", BAD), ("numeric", -1, ".", BAD),
    ("numeric", -1, "1e131071", OK), ("numeric", -1, "1e131072", BAD),
    ("numeric", -1, "1e-16383", OK), ("numeric", -1, "1e-16384", BAD),
    ("numeric", numeric_typmod(5, 2), "999.994", OK), ("numeric", numeric_typmod(5, 2), "999.995", BAD),
    ("numeric", numeric_typmod(5, 2), "-999.995", BAD), ("numeric", numeric_typmod(5, 2), "Infinity", BAD),
    ("numeric", numeric_typmod(5, 2), "NaN", OK), ("numeric", numeric_typmod(5, 2), "1e-20000", OK),
    ("numeric", numeric_typmod(3, -2), "99949", OK), ("numeric", numeric_typmod(3, -2), "99950", BAD),
    ("numeric", numeric_typmod(2, 3), "0.0994", OK), ("numeric", numeric_typmod(2, 3), "0.0995", BAD),
    # money: only what every lc_monetary reads the same way
    ("money", -1, "12", OK), ("money", -1, "12.50", NOT_PORTABLE), ("money", -1, "$1", NOT_PORTABLE),
    ("money", -1, "92233720368547758", OK), ("money", -1, "92233720368547759", BAD),
    # character types: length in characters, excess spaces are cut
    ("varchar", 64 + 4, "x" * 64, OK), ("varchar", 64 + 4, "x" * 100, BAD),
    ("varchar", 5 + 4, "abcde   ", OK), ("varchar", 5 + 4, "abcde\t", BAD), ("varchar", 5 + 4, "ééééé", OK),
    ("varchar", -1, "x" * 10000, OK), ("bpchar", 3 + 4, "abc ", OK), ("bpchar", 3 + 4, "abcd", BAD),
    ("text", -1, "anything at all", OK), ("name", -1, "n" * 200, OK), ("char", -1, "abc", OK),
    # bytea
    ("bytea", -1, "\\x0a1B", OK), ("bytea", -1, "\\x 0a 1b ", OK), ("bytea", -1, "\\x0", BAD),
    ("bytea", -1, "\\x0g", BAD), ("bytea", -1, "plain", OK), ("bytea", -1, "a\\101b", OK),
    ("bytea", -1, "\\400", BAD), ("bytea", -1, "\\\\", OK), ("bytea", -1, "\\", BAD), ("bytea", -1, "\\X0a", BAD),
    # uuid
    ("uuid", -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", OK), ("uuid", -1, "{a0eebc999c0b4ef8bb6d6bb9bd380a11}", OK),
    ("uuid", -1, "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", OK), ("uuid", -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", BAD),
    ("uuid", -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", BAD), ("uuid", -1, "{a0eebc999c0b4ef8bb6d6bb9bd380a11", BAD),
    # json / jsonb
    ("json", -1, '{"a": [1, 2.5e3, -0, true, null]}', OK), ("json", -1, "01", BAD), ("json", -1, "[1,]", BAD),
    ("json", -1, '"\\ud800"', OK), ("json", -1, '"\\u0000"', OK), ("json", -1, '"\x1f"', BAD),
    ("json", -1, "truex", BAD), ("json", -1, "", BAD), ("json", -1, " 1 ", OK), ("json", -1, "\u00a01", BAD),
    ("jsonb", -1, '"\\ud800"', BAD), ("jsonb", -1, '"\\u0000"', BAD), ("jsonb", -1, '"\\ud83d\\ude00"', OK),
    ("jsonb", -1, "1e200000", BAD), ("jsonb", -1, "[" * 1001 + "]" * 1001, NOT_PORTABLE),
    ("jsonb", -1, "[" * 1000 + "]" * 1000, OK),
    # bit strings
    ("bit", 4, "1010", OK), ("bit", 4, "101", BAD), ("bit", 4, "xA", OK), ("bit", 4, "B1012", BAD),
    ("varbit", 6, "101010", OK), ("varbit", 6, "1010101", BAD), ("varbit", 6, "", OK), ("bit", -1, "", OK),
    # network
    ("inet", -1, "192.168.1.1", OK), ("inet", -1, "10.1/16", OK), ("inet", -1, "10.1", BAD),
    ("inet", -1, "1.2.3.4.", OK), ("inet", -1, "256.1.1.1", BAD), ("inet", -1, "::ffff:1.2.34", OK),
    ("inet", -1, "fe80::1/129", BAD), ("inet", -1, " 1.2.3.4", BAD),
    ("cidr", -1, "10", OK), ("cidr", -1, "192.168.1.0/24", OK), ("cidr", -1, "192.168.1.1/24", BAD),
    ("cidr", -1, "0xa0b", OK), ("cidr", -1, "fe80::/64", OK), ("cidr", -1, "fe80::1/64", BAD),
    ("macaddr", -1, "08:00:2b:01:02:03", OK), ("macaddr", -1, "0800.2b01.0203", OK),
    ("macaddr", -1, "0x:0:2b:1:2:3", OK), ("macaddr", -1, "100:0:0:0:0:0", BAD), ("macaddr", -1, "08:00:2b:01:02", BAD),
    ("macaddr8", -1, "08:00:2b:01:02:03:04:05", OK), ("macaddr8", -1, "08:00:2b:01:02:03", OK),
    ("macaddr8", -1, "08:00:2b:01:02:03:0", OK), ("macaddr8", -1, "08:00-2b:01:02:03", BAD),
    ("macaddr8", -1, "08:00:2b:01:02:03:é", BAD),
    # geometry
    ("point", -1, "(1,2)", OK), ("point", -1, "1,2", OK), ("point", -1, "(1,2", BAD),
    ("lseg", -1, "[(1,2),(3,4)]", OK), ("box", -1, "[(1,2),(3,4)]", BAD), ("path", -1, "[(1,2),(3,4),(5,6)]", OK),
    ("polygon", -1, "((1,2),(3,4),(5,6))", OK), ("polygon", -1, "(1,2)", OK), ("polygon", -1, "", BAD),
    ("line", -1, "{1,2,3}", OK), ("line", -1, "{0,0,1}", BAD), ("line", -1, "((1,2),(1,2))", BAD),
    ("circle", -1, "<(1,2),3>", OK), ("circle", -1, "<(1,2),-3>", BAD),
    # identifiers and vectors
    ("tid", -1, "(1,2)", OK), ("tid", -1, "(1,65536)", BAD), ("tid", -1, "x(1,2)y", OK),
    ("int2vector", -1, "1 2 3", OK), ("int2vector", -1, "1,2", BAD), ("oidvector", -1, "1-2", OK),
    ("txid_snapshot", -1, "10:20:12,15", OK), ("txid_snapshot", -1, "10:20:21", BAD),
    ("regclass", -1, "12345", OK), ("regclass", -1, "-", OK), ("regclass", -1, "items", NOT_PORTABLE),
    ("regrole", -1, "4294967296", BAD), ("aclitem", -1, "alice=r/bob", NOT_PORTABLE),
    ("xml", -1, "<a/>", NOT_PORTABLE), ("jsonpath", -1, "$.a", NOT_PORTABLE),
    # text search
    ("tsvector", -1, "'a b':1,2A c:3B", OK), ("tsvector", -1, "a:0", BAD), ("tsvector", -1, "''", BAD),
    ("tsvector", -1, "a:4294967296", BAD), ("tsvector", -1, "a\\", BAD),
    ("tsquery", -1, "a & b | !c", OK), ("tsquery", -1, "(a <-> b) & c:*", OK), ("tsquery", -1, "a &", BAD),
    ("tsquery", -1, "", OK), ("tsquery", -1, "a <16385> b", BAD), ("tsquery", -1, "!" * 32 + "a", OK),
    ("tsquery", -1, "!" * 33 + "a", BAD),
    # dates and times: ISO 8601 decided exactly, other spellings refused as not portable
    ("date", -1, "2020-02-29", OK), ("date", -1, "2021-02-29", BAD), ("date", -1, "0000-01-01", BAD),
    ("date", -1, "0001-02-29 BC", OK), ("date", -1, "4714-11-24 BC", OK), ("date", -1, "4714-11-23 BC", BAD),
    ("date", -1, "5874897-12-31", OK), ("date", -1, "5874898-01-01", BAD), ("date", -1, "epoch", OK),
    ("date", -1, "2020-01-02T12:34:56.789Z", OK), ("date", -1, "2020-01-02 12:00 +16", BAD),
    ("date", -1, "01/02/2020", NOT_PORTABLE), ("date", -1, "20-01-02", NOT_PORTABLE), ("date", -1, "today", NOT_PORTABLE),
    ("date", -1, "+infinity", NOT_PORTABLE),
    ("timestamp", -1, "2020-01-02 24:00:00", OK), ("timestamp", -1, "2020-01-02 24:00:01", BAD),
    ("timestamp", -1, "2020-01-02 23:59:60", OK), ("timestamp", -1, "2020-01-02 23:59:60.5", BAD),
    ("timestamp", -1, "294276-12-31 23:59:59.999999", OK), ("timestamp", -1, "294276-12-31 23:59:59.9999995", BAD),
    ("timestamp", 0, "294276-12-31 23:59:59.5", OK), ("timestamp", -1, "2020-01-02 12:00:00+05 BC", OK),
    ("timestamp", -1, "Jan 2 2020", NOT_PORTABLE),
    ("timestamptz", -1, "2020-01-02T12:34:56.789Z", OK), ("timestamptz", -1, "2020-01-02 12:00:00+05:30", OK),
    ("timestamptz", -1, "2020-01-02 12:00:00", NOT_PORTABLE), ("timestamptz", -1, "2020-01-02 12:00 PST", NOT_PORTABLE),
    ("timestamptz", -1, "294276-12-31 23:59:59-01", BAD), ("timestamptz", -1, "4714-11-24 00:00:00-01 BC", OK),
    ("timestamptz", -1, "2020-01-02 12:00:00+16", BAD), ("timestamptz", -1, "now", NOT_PORTABLE),
    ("time", -1, "24:00:00", OK), ("time", -1, "23:59:60.5", BAD), ("time", -1, "25:00", BAD),
    ("time", -1, "2020-01-02 12:00:00", OK), ("time", -1, "2020-01-02T12:00", NOT_PORTABLE),
    ("timetz", -1, "12:00:00+05", OK), ("timetz", -1, "12:00:00", NOT_PORTABLE),
    ("interval", -1, "1 year 2 mons 3 days 04:05:06.789", OK), ("interval", -1, "-1 days +02:00:00", OK),
    ("interval", -1, "P1Y2M3DT4H5M6S", OK), ("interval", -1, "2147483648 days", BAD),
    ("interval", -1, "178956971 years", BAD), ("interval", -1, "1 day 2 days", BAD),
    ("interval", -1, "00:60:00", BAD), ("interval", -1, "-1 day 2 hours", NOT_PORTABLE),
    ("interval", -1, "5", NOT_PORTABLE), ("interval", -1, " P1Y", BAD),
    # ranges
    ("int4range", -1, "[1,2)", OK), ("int4range", -1, "[3,1]", BAD), ("int4range", -1, "(2147483647,)", BAD),
    ("int4range", -1, "(2147483647,2147483647]", OK), ("int4range", -1, "empty", OK), ("int4range", -1, "empty x", BAD),
    ("numrange", -1, "[1,NaN]", OK), ("numrange", -1, "[NaN,1]", BAD),
    ("daterange", -1, "[5874897-12-31,5874897-12-31]", BAD), ("daterange", -1, "[2020-01-01,infinity)", OK),
    ("tstzrange", -1, '["2020-01-01 00:00+00","2020-01-01 00:30+01")', BAD),
    # arrays: structure, NULLs, element types and modifiers
    ("_int4", -1, "{1,2,3}", OK), ("_int4", -1, "{1,notanint}", BAD), ("_int4", -1, "{NULL,null}", OK),
    ("_int4", -1, '{"NULL"}', BAD), ("_int4", -1, "{{1,2},{3}}", BAD), ("_int4", -1, "[0:1]={1,2}", OK),
    ("_int4", -1, "[1]={1,2}", BAD), ("_int4", -1, "[2147483647:2147483647]={1}", BAD),
    ("_int4", -1, "{{{{{{1}}}}}}", OK), ("_int4", -1, "{{{{{{{1}}}}}}}", BAD), ("_int4", -1, "{}", OK),
    ("_int4", -1, "{{}}", BAD), ("_int4", -1, "{1}x", BAD), ("_text", -1, '{"a b","c\\"d",NULL}', OK),
    ("_varchar", 3 + 4, "{abc,abcd}", BAD), ("_varchar", 3 + 4, '{abc,"abc  "}', OK),
    ("_box", -1, "{(1,2),(3,4);(5,6),(7,8)}", OK), ("_timestamptz", -1, "{2020-01-01T00:00Z,infinity}", OK),
]


class ValueCases(unittest.TestCase):
    def test_cases(self):
        wrong = []
        for type_name, typmod, text, expected in CASES:
            try:
                V.check(type_name, typmod, text)
                got = OK
            except V.NotPortable:
                got = NOT_PORTABLE
            except V.InvalidValue:
                got = BAD
            if got != expected:
                wrong.append(f"{type_name}({typmod}) {text[:60]!r}: expected {expected}, got {got}")
        self.assertEqual(wrong, [])

    def test_every_carried_type_has_a_validator(self):
        for pgtype in types.BUILTIN_TYPES:
            check = V.validator(pgtype.name, -1)
            self.assertTrue(callable(check), pgtype.name)

    def test_unknown_type(self):
        self.assertRaises(UnknownTypeError, V.validator, "my_enum", -1)

    def test_messages_say_what_postgres_would(self):
        cases = [
            ("int4", -1, "notanint", 'invalid input syntax for type integer: "notanint"'),
            ("int2", -1, "40000", 'value "40000" is out of range for type smallint'),
            ("varchar", 68, "x" * 100, "value too long for type character varying(64)"),
            ("bool", -1, "maybe", 'invalid input syntax for type boolean: "maybe"'),
            ("date", -1, "2021-02-29", 'date/time field value out of range: "2021-02-29"'),
            ("bit", 4, "101", "bit string length 3 does not match type bit(4)"),
        ]
        for type_name, typmod, text, message in cases:
            with self.assertRaises(V.InvalidValue) as caught:
                V.check(type_name, typmod, text)
            self.assertEqual(str(caught.exception), message)

    def test_not_portable_is_an_invalid_value(self):
        self.assertTrue(issubclass(V.NotPortable, V.InvalidValue))
        with self.assertRaises(V.NotPortable) as caught:
            V.check("timestamptz", -1, "2020-01-02 12:00:00")
        self.assertIn("TimeZone", str(caught.exception))

    def test_huge_values_do_not_break_the_validator(self):
        # Digit strings beyond Python's int() conversion limit, deep nesting, long inputs.
        V.check("numeric", -1, "1" * 100_000)
        self.assertRaises(V.InvalidValue, V.check, "int8", -1, "9" * 100_000)
        self.assertRaises(V.InvalidValue, V.check, "float8", -1, "9" * 400 + "e999999999999")
        V.check("float8", -1, "0." + "0" * 5000 + "1e4990")
        self.assertRaises(V.InvalidValue, V.check, "date", -1, "9" * 10_000 + "-01-01")
        self.assertRaises(V.InvalidValue, V.check, "interval", -1, "9" * 10_000 + " days")
        self.assertRaises(V.InvalidValue, V.check, "_int4", -1, "{" * 100_000)
        V.check("json", -1, "[" * 1000 + "]" * 1000)
        V.check("text", -1, "x" * 1_000_000)

    def test_validators_are_cached(self):
        self.assertIs(V.validator("varchar", 68), V.validator("varchar", 68))
