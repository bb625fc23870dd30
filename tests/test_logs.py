"""
electric.logs: bound identity fields, the text and JSON lines, the level
threshold, secrets hidden, and how the twistd plugin hands its observer to
twistd.  (What real links log is in tests/test_logs_e2e.py.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tempfile

from twisted.application import service
from twisted.logger import ILogObserver, LogLevel, LogPublisher, Logger
from twisted.logger._legacy import publishToNewObserver
from twisted.python import log as legacy_log
from twisted.python.logfile import LogFile
from twisted.trial import unittest

from electric import logs
from electric.config import Config, ConfigError

CONFIG_ENV = {
    "CONNECTORS": "db1=postgresql://u:Pg-Password-Of-db1@h:5432/d?sslpassword=Key-Passphrase-99;"
                  "db2=postgresql://u:short@h:5433/d",
    "SATELLITE_AUTH_SIGNING_KEY": "Signing-Key-For-The-Logs-Unit-Tests-0123456789",
    "ELECTRIC_API_TOKEN": "Api-Token-Of-The-Logs-Tests",
    "GLOBAL_CLUSTER_ID": "cluster-x",
    "ELECTRIC_INSTANCE_ID": "instance-y",
}


def capture(config, **kw):
    """A Logger publishing only to `logs.observer(config, ...)`, and the text it wrote."""
    out = io.StringIO()
    publisher = LogPublisher(logs.observer(config, out, **kw))
    return Logger(namespace="electric.test", observer=publisher), out


class BoundLoggerTests(unittest.TestCase):
    def setUp(self):
        self.events = []
        self.log = Logger(namespace="electric.test", observer=self.events.append)

    def test_bound_fields_on_every_event_call_site_wins(self):
        bound = logs.bind(self.log, connector="db1", peer="10.0.0.1:5000", slot=None)
        bound.warn("table {table} skipped", table="t")
        bound.info("moved {connector}", connector="db2")
        self.assertEqual([(e["log_level"], e["connector"], e["peer"]) for e in self.events],
                         [(LogLevel.warn, "db1", "10.0.0.1:5000"), (LogLevel.info, "db2", "10.0.0.1:5000")])
        self.assertNotIn("slot", self.events[0])  # None is not a field
        self.assertEqual(self.events[0]["log_namespace"], "electric.test")

    def test_rebinding_adds_fields_and_leaves_the_original_alone(self):
        peer = logs.bind(self.log, peer="p")
        client = peer.bind(client_id="c1", user_id="alice")
        client.info("authenticated")
        peer.info("plain")
        self.assertEqual(
            [{k: e.get(k) for k in ("peer", "client_id", "user_id")} for e in self.events],
            [{"peer": "p", "client_id": "c1", "user_id": "alice"}, {"peer": "p", "client_id": None, "user_id": None}])

    def test_failure_carries_the_fields_and_the_level(self):
        bound = logs.bind(self.log, slot="s1")
        try:
            1 / 0
        except ZeroDivisionError:
            bound.failure("encoding failed", level=LogLevel.error)
        [event] = self.events
        self.assertEqual((event["slot"], event["log_level"]), ("s1", LogLevel.error))
        self.assertTrue(event["log_failure"].check(ZeroDivisionError))


class OutputTests(unittest.TestCase):
    def setUp(self):
        self.config = Config.from_environ(CONFIG_ENV)

    def test_text_line_shows_level_identity_and_instance(self):
        log, out = capture(self.config)
        logs.bind(log, connector="db1", peer="[::1]:5433").warn('table "{table}" skipped: {reason}',
                                                               table="t", reason="no primary key")
        line = out.getvalue()
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ")
        self.assertTrue(line.endswith(
            ' [electric.test#warn] [connector=db1 peer="[::1]:5433" cluster_id=cluster-x instance_id=instance-y]'
            ' table "t" skipped: no primary key\n'), line)

    def test_text_traceback_is_indented_under_its_line(self):
        log, out = capture(self.config)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.failure("it failed")
        first, *rest = out.getvalue().rstrip("\n").split("\n")
        self.assertIn("[electric.test#critical] [cluster_id=cluster-x instance_id=instance-y] it failed", first)
        self.assertTrue(rest and all(line.startswith("\t") for line in rest), rest)
        self.assertIn("RuntimeError: boom", rest[-1] if rest[-1].strip() else rest[-2])

    def test_json_line_has_every_field(self):
        log, out = capture(self.config, fmt="json")
        logs.bind(log, slot="db1", connector="db1").info("stream stopped at {pos}: {reason}", pos=7,
                                                         reason="shutting down", time="clash", ratio=float("nan"),
                                                         thing=object)
        [line] = out.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(
            {k: event[k] for k in ("level", "namespace", "message", "event", "cluster_id", "instance_id", "slot",
                                   "connector", "pos", "reason", "field_time", "ratio", "thing")},
            {"level": "info", "namespace": "electric.test", "message": "stream stopped at 7: shutting down",
             "event": "stream stopped at {pos}: {reason}", "cluster_id": "cluster-x", "instance_id": "instance-y",
             "slot": "db1", "connector": "db1", "pos": 7, "reason": "shutting down", "field_time": "clash",
             "ratio": "nan", "thing": "<class 'object'>"})
        self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")
        self.assertFalse(any(k.startswith("log_") for k in event), event)

    def test_json_failure_and_legacy_events(self):
        log, out = capture(self.config, fmt="json")
        try:
            raise KeyError("k")
        except KeyError:
            log.failure("lookup failed", level=LogLevel.error)
        # What twisted.python.log.msg (used by Twisted's ports) delivers.
        publishToNewObserver(log.observer, {"message": ("Site starting on 5050",), "isError": 0, "system": "-",
                                         "time": 1.0}, legacy_log.textFromEventDict)
        failure, site = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual((failure["level"], failure["failure"]), ("error", "KeyError: 'k'"))
        self.assertIn("Traceback", failure["traceback"])
        self.assertEqual((site["message"], site["level"], site["cluster_id"]),
                         ("Site starting on 5050", "info", "cluster-x"))
        self.assertNotIn("event", site)
        self.assertNotIn("isError", site)

    def test_level_threshold(self):
        for level, shown in (("debug", ["d", "i", "w", "e", "c"]), ("info", ["i", "w", "e", "c"]),
                             ("warn", ["w", "e", "c"]), ("error", ["e", "c"]), ("critical", ["c"])):
            log, out = capture(self.config, fmt="json", level=level)
            log.debug("d")
            log.info("i")
            log.warn("w")
            log.error("e")
            log.critical("c")
            self.assertEqual([json.loads(line)["message"] for line in out.getvalue().splitlines()], shown, level)

    def test_configuration_picks_format_and_level(self):
        config = Config.from_environ({**CONFIG_ENV, "LOG_FORMAT": "json", "LOG_LEVEL": "error"})
        log, out = capture(config)
        log.warn("hidden")
        log.error("shown {n}", n=1)
        self.assertEqual([json.loads(line)["message"] for line in out.getvalue().splitlines()], ["shown 1"])

    def test_bad_log_variables_are_configuration_errors(self):
        with self.assertRaises(ConfigError) as e:
            Config.from_environ({"LOG_FORMAT": "xml", "LOG_LEVEL": "loud"})
        self.assertEqual(e.exception.problems, ["LOG_FORMAT='xml': expected text or json",
                                                "LOG_LEVEL='loud': expected debug, info, warn, error or critical"])
        self.assertEqual((Config.from_environ({}).log_format, Config.from_environ({}).log_level), ("text", "info"))

    def test_configured_secrets_are_hidden_in_both_formats(self):
        secrets = ["Pg-Password-Of-db1", "Key-Passphrase-99", CONFIG_ENV["SATELLITE_AUTH_SIGNING_KEY"],
                   CONFIG_ENV["ELECTRIC_API_TOKEN"]]
        self.assertEqual(sorted(logs.config_secrets(self.config)), sorted(secrets + ["short"]))
        for fmt in ("text", "json"):
            log, out = capture(self.config, fmt=fmt)
            for secret in secrets:
                log.error("oops: {text}", text=f"dsn password={secret} x", value=secret)
            log.info("a short password stays: short")
            text = out.getvalue()
            for secret in secrets:
                self.assertNotIn(secret, text)
            self.assertEqual(text.count("***"), (3 if fmt == "json" else 1) * len(secrets))  # message, text, value
            self.assertIn("a short password stays: short", text)

    def test_redactor_hides_longer_secrets_first(self):
        r = logs.Redactor(["abcdefgh", "abcdefgh-and-more", "", None, "tiny"])
        self.assertEqual(r("x abcdefgh-and-more y abcdefgh tiny"), "x *** y *** tiny")


class TwistdTests(unittest.TestCase):
    def test_output_follows_twistd_options(self):
        self.assertIs(logs.twistd_output({"nodaemon": True, "logfile": None}), sys.stdout)
        self.assertIs(logs.twistd_output({"nodaemon": True, "logfile": "-"}), sys.stdout)
        self.assertIsNone(logs.twistd_output({"nodaemon": True, "syslog": True}))
        self.assertIsNone(logs.twistd_output({"nodaemon": True, "logger": "my.observer"}))
        with self.assertRaises(SystemExit):
            logs.twistd_output({"nodaemon": False, "logfile": "-"})
        tmp = tempfile.mkdtemp(prefix="electric-logs-")
        path = os.path.join(tmp, "electric.log")
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        out = logs.twistd_output({"nodaemon": False, "logfile": path})
        self.addCleanup(out.close)
        self.assertIsInstance(out, LogFile)
        self.assertEqual(out.path, path)

    def test_plugin_hands_its_observer_to_the_application(self):
        from twisted.plugins.electric_plugin import Options, serviceMaker

        tmp = tempfile.mkdtemp(prefix="electric-logs-")
        env = {"ELECTRIC_DATA_DIR": os.path.join(tmp, "data"), "OFFSET_STORAGE_FILE": os.path.join(tmp, "o.dat"),
               "LOG_FORMAT": "json"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self.addCleanup(lambda: [os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
                                 for k, v in saved.items()])
        options = Options()
        options.parent = {"nodaemon": True, "logfile": None}
        root = serviceMaker.makeService(options)
        self.assertIsNotNone(root.log_observer)
        application = service.Application("electric")
        root.setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), root.log_observer)
