"""LSN text form and Postgres timestamps."""

from datetime import datetime, timezone

from twisted.trial import unittest

from electric.postgres.protocol.lsn import (
    LSNError, MAX_LSN, PG_EPOCH_UNIX_US, datetime_to_pg, format_lsn, parse_lsn, pg_now,
    pg_to_datetime, pg_to_unix_us, unix_to_pg_us,
)
from electric.postgres.protocol import types


class LsnTextTests(unittest.TestCase):
    def test_parse_and_format_examples_from_the_specs(self):
        for text, value in [("0/0", 0), ("0/1925A50", 0x1925A50), ("2/A7F4A880", 0x2A7F4A880),
                            ("16/B374D848", 0x16B374D848), ("FFFFFFFF/FFFFFFFF", MAX_LSN)]:
            self.assertEqual(parse_lsn(text), value)
            self.assertEqual(format_lsn(value), text)

    def test_format_is_uppercase_without_leading_zeros(self):
        self.assertEqual(format_lsn(0x00000001000000AB), "1/AB")
        self.assertEqual(parse_lsn("0000000a/000000ab"), 0xA000000AB)
        self.assertEqual(format_lsn(parse_lsn("0000000a/000000ab")), "A/AB")

    def test_bad_text_is_a_clear_error(self):
        for bad in ["", "0", "0/", "/0", "1/2/3", "G/0", "123456789/0", "0/123456789", "-1/0",
                    " 0 / 1", "0x1/0"]:
            with self.assertRaises(LSNError) as cm:
                parse_lsn(bad)
            self.assertIn("invalid LSN", str(cm.exception))
        self.assertRaises(LSNError, parse_lsn, None)

    def test_format_rejects_out_of_range(self):
        for bad in [-1, MAX_LSN + 1, 1.5, "0/1", True]:
            self.assertRaises(LSNError, format_lsn, bad)


class TimestampTests(unittest.TestCase):
    def test_begin_example_timestamp(self):
        # postgres-inbound.md section 6: 000230F65858D5F2 = 2019-07-18T17:02:35.726322Z
        pg = 0x000230F65858D5F2
        self.assertEqual(pg_to_datetime(pg), datetime(2019, 7, 18, 17, 2, 35, 726322, tzinfo=timezone.utc))
        self.assertEqual(datetime_to_pg(pg_to_datetime(pg)), pg)

    def test_unix_conversion(self):
        self.assertEqual(pg_to_unix_us(0), 946684800_000_000)
        self.assertEqual(unix_to_pg_us(PG_EPOCH_UNIX_US), 0)
        self.assertEqual(unix_to_pg_us(pg_to_unix_us(-5)), -5)
        self.assertEqual(pg_to_datetime(0), datetime(2000, 1, 1, tzinfo=timezone.utc))
        self.assertGreater(pg_now(), unix_to_pg_us(1_700_000_000_000_000))
        self.assertRaises(ValueError, datetime_to_pg, datetime(2020, 1, 1))


class TypeTableTests(unittest.TestCase):
    def test_lookups_both_ways(self):
        self.assertEqual(types.name_of(23), "int4")
        self.assertEqual(types.oid_of("int4"), 23)
        self.assertEqual(types.type_by_oid(2950).typlen, 16)
        self.assertEqual(types.type_by_name("uuid").array_oid, 2951)
        self.assertEqual(types.typlen_of(19), 64)
        self.assertEqual(types.typlen_of(16412), -1)

    def test_arrays_are_underscore_names(self):
        self.assertEqual(types.name_of(1007), "_int4")
        self.assertEqual(types.type_by_name("_int4").oid, 1007)
        self.assertEqual(types.type_by_name("int4[]").oid, 1007)
        self.assertEqual(types.type_by_oid(1007).element_oid, 23)
        self.assertTrue(types.type_by_oid(1007).is_array)
        self.assertFalse(types.type_by_oid(23).is_array)
        self.assertEqual(types.name_of(271), "_xid8")
        self.assertEqual(types.name_of(1003), "_name")

    def test_whole_table_is_consistent(self):
        scalars = [t for t in types.BUILTIN_TYPES if not t.is_array]
        self.assertEqual(len(scalars), 71)
        for t in scalars:
            self.assertEqual(types.type_by_name(t.name), t)
            if t.array_oid:
                arr = types.type_by_oid(t.array_oid)
                self.assertEqual(arr.name, "_" + t.name)
                self.assertEqual(arr.element_oid, t.oid)
        self.assertEqual(types.type_by_name("unknown").array_oid, 0)

    def test_unknown_is_a_clear_error(self):
        with self.assertRaises(types.UnknownTypeError) as cm:
            types.type_by_oid(16412)
        self.assertIn("unsupported type OID 16412", str(cm.exception))
        with self.assertRaises(types.UnknownTypeError) as cm:
            types.type_by_name("mood")
        self.assertIn("'mood'", str(cm.exception))
        self.assertIsNone(types.find_by_oid(99999))
        self.assertIsNone(types.find_by_name("nosuch[]"))
