"""
A connector's retries: Twisted's backoffPolicy (1 s doubling to 10 s, plus
jitter) on an injected clock, so the delays are checked exactly and no test
waits for them; the error it keeps names the connector and its sslmode.
"""

from __future__ import annotations

import random

from twisted.internet import defer, task
from twisted.trial import unittest

from electric.config import Config
from electric.postgres.source.connector import ConnectorService, retry_policy
from electric.schema import SchemaRegistry
from tests.pgcluster import free_port
from tests import seeds
from tests.polling import wait_until


class PolicyTests(unittest.TestCase):
    def test_doubling_to_ten_seconds_plus_jitter(self):
        policy = retry_policy(jitter=lambda: 0.25)
        self.assertEqual([policy(n) for n in range(7)], [1.25, 2.25, 4.25, 8.25, 10.25, 10.25, 10.25])
        self.assertEqual(policy(10_000), 10.25)

    def test_default_jitter_is_under_a_second(self):
        seed = seeds.choose()
        print(seeds.rerun_hint(seed, self.id()))
        random.seed(seed)
        policy = retry_policy()
        for attempt in range(8):
            base = min(10.0, 2.0 ** attempt)
            delay = policy(attempt)
            self.assertTrue(base <= delay < base + 1.0, (attempt, delay))


class ConnectorRetryTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_retries_follow_the_policy_on_the_injected_clock(self):
        port = free_port()  # nothing listens there: every setup attempt fails at once
        config = Config.from_environ({"CONNECTORS": f"c1=postgresql://u:secret@127.0.0.1:{port}/db?sslmode=disable"})
        clock = task.Clock()
        svc = ConnectorService(config, config.connectors[0], hub=None, registry=SchemaRegistry(), credentials=None,
                               clock=clock, retry_delay=retry_policy(jitter=lambda: 0.5))
        svc.startService()
        self.addCleanup(svc.stopService)

        def pending():
            return [round(c.getTime() - clock.seconds(), 6) for c in clock.getDelayedCalls()]

        yield wait_until(lambda: svc.phase == "backoff" and pending() == [1.5], what="first retry in 1.5 s")
        error = svc.status()["last_error"]
        self.assertTrue(error.startswith(f"connector c1: setup failed: cannot connect to 127.0.0.1:{port}: "), error)
        self.assertTrue(error.endswith("(sslmode=disable)"), error)
        self.assertNotIn("secret", error)
        for delay in (2.5, 4.5, 8.5, 10.5, 10.5):
            clock.advance(pending()[0])
            yield wait_until(lambda: svc.phase == "backoff" and pending() == [delay], what=f"retry in {delay} s")
