"""Satellite auth modes and the gen-token command."""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import jwt
from twisted.trial import unittest

from electric.config import Config, ConfigError
from electric.satellite import auth, tokens
from electric.satellite.auth import AuthError, InsecureAuth, JWTAuth

KEY = "k" * 32
ISS = "dev.electric-db"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def token(claims=None, key=KEY, alg="HS256", **extra):
    body = {"user_id": "alice", "type": "access", "iss": ISS, "exp": int(time.time()) + 60}
    if claims is not None:
        body = claims
    body.update(extra)
    return jwt.encode(body, key, algorithm=alg)


class Insecure(unittest.TestCase):
    def test_token_is_user(self):
        self.assertEqual(InsecureAuth().authenticate("alice"), "alice")

    def test_empty_refused(self):
        self.assertRaises(AuthError, InsecureAuth().authenticate, "")

    def test_selected_without_key(self):
        self.assertIsInstance(auth.from_config(Config.from_environ({})), InsecureAuth)


class JWT(unittest.TestCase):
    def setUp(self):
        self.auth = JWTAuth(KEY, ISS)

    def refused(self, tok, text):
        with self.assertRaises(AuthError) as e:
            self.auth.authenticate(tok)
        self.assertIn(text, str(e.exception))
        self.assertNotIn(KEY, str(e.exception))

    def test_valid(self):
        self.assertEqual(self.auth.authenticate(token()), "alice")

    def test_type_optional(self):
        body = {"user_id": "bob", "iss": ISS, "exp": int(time.time()) + 60}
        self.assertEqual(self.auth.authenticate(token(body)), "bob")

    def test_generated_token_accepted(self):
        tok, expiry = self.auth.generate("carol", ttl=120)
        self.assertEqual(self.auth.authenticate(tok), "carol")
        claims = jwt.decode(tok, KEY, algorithms=["HS256"], issuer=ISS)
        self.assertEqual(claims["type"], "access")
        self.assertEqual(len(claims["nonce"]), 32)
        self.assertEqual(int(expiry.timestamp()), claims["exp"])

    def test_expired(self):
        self.refused(token(exp=int(time.time()) - 60), "expired")

    def test_expiry_leeway(self):
        self.assertEqual(self.auth.authenticate(token(exp=int(time.time()) - 2)), "alice")

    def test_missing_exp(self):
        self.refused(token({"user_id": "alice", "iss": ISS}), "exp")

    def test_wrong_issuer(self):
        self.refused(token(iss="someone-else"), "issuer")

    def test_missing_issuer(self):
        self.refused(token({"user_id": "alice", "exp": int(time.time()) + 60}), "iss")

    def test_wrong_key(self):
        self.refused(token(key="x" * 32), "signature")

    def test_short_key_signature(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyjwt warns about signing with a short key: that is the point
            tok = token(key="short")
        self.refused(tok, "signature")

    def test_hs512_refused(self):
        self.refused(token(key=KEY * 2, alg="HS512"), "HS512")

    def test_none_refused(self):
        body = {"user_id": "alice", "iss": ISS, "exp": int(time.time()) + 60}
        self.refused(jwt.encode(body, None, algorithm="none"), "'none'")

    def test_missing_user_id(self):
        self.refused(token({"iss": ISS, "exp": int(time.time()) + 60, "type": "access"}), "user_id")

    def test_empty_user_id(self):
        self.refused(token(user_id=""), "user_id")

    def test_refresh_token(self):
        self.refused(token(type="refresh"), "'refresh'")

    def test_garbage(self):
        self.refused("not-a-jwt", "malformed")

    def test_short_key_refused_at_construction(self):
        with self.assertRaises(ValueError) as e:
            JWTAuth("0123456789", ISS)
        self.assertIn("at least 32 are required", str(e.exception))
        self.assertNotIn("0123456789", str(e.exception))

    def test_short_key_refused_by_config(self):
        with self.assertRaises(ConfigError) as e:
            Config.from_environ({"SATELLITE_AUTH_SIGNING_KEY": "0123456789", "SATELLITE_AUTH_SIGNING_ISS": ISS})
        self.assertNotIn("0123456789", str(e.exception))

    def test_key_not_in_repr(self):
        self.assertNotIn(KEY, repr(self.auth))

    def test_selected_with_key(self):
        a = auth.from_config(Config.from_environ({"SATELLITE_AUTH_SIGNING_KEY": KEY, "SATELLITE_AUTH_SIGNING_ISS": ISS}))
        self.assertIsInstance(a, JWTAuth)
        self.assertEqual(a.issuer, ISS)


class GenToken(unittest.TestCase):
    env = {"SATELLITE_AUTH_SIGNING_KEY": KEY, "SATELLITE_AUTH_SIGNING_ISS": ISS}

    def run_cli(self, argv, env=None):
        parser = argparse.ArgumentParser()
        tokens.add_arguments(parser)
        out, err = io.StringIO(), io.StringIO()
        rc = tokens.run(parser.parse_args(argv), environ=self.env if env is None else env, stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    def test_human(self):
        rc, out, _ = self.run_cli(["alice", "bob"])
        self.assertEqual(rc, 0)
        self.assertTrue(out.startswith("\nuser id: alice\n  token: "))
        self.assertIn("user id: bob", out)
        self.assertRegex(out, r"expiry: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}Z")

    def test_csv(self):
        rc, out, _ = self.run_cli(["alice", "bob", "--format", "csv", "--ttl", "100"])
        self.assertEqual(rc, 0)
        lines = out.splitlines()
        self.assertEqual([l.split(",")[0] for l in lines], ["alice", "bob"])
        user, tok, expiry = lines[0].split(",")
        self.assertEqual(JWTAuth(KEY, ISS).authenticate(tok), "alice")
        self.assertRegex(expiry, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
        exp = jwt.decode(tok, KEY, algorithms=["HS256"], issuer=ISS)["exp"]
        self.assertLess(abs(exp - (time.time() + 100)), 5)

    def test_json(self):
        rc, out, _ = self.run_cli(["alice", "--format", "json"])
        self.assertEqual(rc, 0)
        obj = json.loads(out)
        self.assertEqual(set(obj), {"alice"})
        self.assertEqual(set(obj["alice"]), {"expiry", "token"})
        self.assertEqual(JWTAuth(KEY, ISS).authenticate(obj["alice"]["token"]), "alice")

    def test_output_file(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tokens.csv")
            rc, out, _ = self.run_cli(["alice", "--output", path])
            self.assertEqual(rc, 0)
            self.assertEqual(out, f"Written token information to {path}\n")
            with open(path) as f:
                content = f.read()
            self.assertTrue(content.startswith("alice,"))
            self.assertNotIn("\x1b", content)

    def test_invalid_format(self):
        rc, out, err = self.run_cli(["alice", "--format", "xml"])
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("Invalid format 'xml'", err)

    def test_insecure_mode(self):
        rc, out, err = self.run_cli(["alice"], env={})
        self.assertEqual((rc, out), (1, ""))
        self.assertIn("JWT authentication not configured", err)

    def test_bad_config_masks_key(self):
        rc, _, err = self.run_cli(["alice"], env={"SATELLITE_AUTH_SIGNING_KEY": "tooshort"})
        self.assertEqual(rc, 1)
        self.assertIn("SATELLITE_AUTH_SIGNING_KEY", err)
        self.assertNotIn("tooshort", err)

    def test_python_m(self):
        env = dict(os.environ, **self.env)
        proc = subprocess.run(
            [sys.executable, "-m", "electric.satellite.tokens", "dave", "--format", "csv"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr)
        tok = proc.stdout.strip().split(",")[1]
        self.assertEqual(JWTAuth(KEY, ISS).authenticate(tok), "dave")
