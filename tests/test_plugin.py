"""
The `electric` twistd plugin as an operator meets it: --help, a real
`twistd -n electric` on free ports answering /api/status and exiting 0 on
SIGTERM, bad configurations exiting non-zero with the aggregated message and
no traceback; the in-process service tree; and the packaging that makes the
plugin visible after `pip install`.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.application.service import IServiceMaker
from twisted.internet import defer, error, protocol, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.plugin import getPlugins
from twisted.trial import unittest
from twisted.web.client import Agent, readBody

from electric.config import VARIABLES, Config, ConfigError
from electric.service import ElectricService, build_service
from tests.pgcluster import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
TWISTD = os.path.join(BIN, "twistd")


class _Run(protocol.ProcessProtocol):
    def __init__(self):
        self.out = b""
        self.err = b""
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.out += data

    def errReceived(self, data):
        self.err += data

    def processEnded(self, reason):
        self.ended.callback(reason.value.exitCode)

    @property
    def text(self):
        return (self.out + self.err).decode("utf-8", "replace")


def _env(workdir, **extra):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        PYTHONPATH=ROOT,
        LISTEN_HOST="127.0.0.1",
        ELECTRIC_DATA_DIR=os.path.join(workdir, "data"),
        OFFSET_STORAGE_FILE=os.path.join(workdir, "offsets.dat"),
        MIGRATIONS_DIR=os.path.join(workdir, "migrations"),
        STATUS_PORT=str(free_port()),
        WEBSOCKET_PORT=str(free_port()),
        POSTGRES_REPLICATION_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _spawn(args, env, workdir):
    run = _Run()
    transport = reactor.spawnProcess(run, args[0], args, env=env, path=workdir)
    return run, transport


def _with_timeout(d, seconds):
    return d.addTimeout(seconds, reactor)


class PluginDiscoveryTests(unittest.TestCase):
    def test_plugin_is_found(self):
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("electric", makers)
        options = makers["electric"].options()
        usage = str(options)
        for name in VARIABLES:
            self.assertIn(name, usage)

    def test_help_documents_every_variable_with_its_default(self):
        proc = subprocess.run([TWISTD, "electric", "--help"], capture_output=True, text=True, timeout=60,
                              cwd=tempfile.gettempdir(), env=dict(os.environ, PYTHONPATH=ROOT))
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for name, (default, _text) in VARIABLES.items():
            shown = "unset" if default is None else (default or '""')
            self.assertIn(f"{name} (default: {shown})", proc.stdout)


class TwistdTests(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="electric-plugin-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def spawn(self, env, args=(TWISTD, "-n", "--pidfile=", "electric")):
        run, transport = _spawn(list(args), env, self.workdir)

        def kill():
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                return None
            return run.ended

        self.addCleanup(kill)
        return run, transport

    @defer.inlineCallbacks
    def get_status(self, port, run, timeout=30.0, host="127.0.0.1", ca_file=None):
        """Poll /api/status until it answers (or the process dies); https:// trusting `ca_file` if given."""
        if ca_file is None:
            agent, scheme = Agent(reactor), "http"
        else:
            from twisted.internet.ssl import Certificate
            from twisted.web.client import BrowserLikePolicyForHTTPS

            with open(ca_file, "rb") as f:
                policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
            agent, scheme = Agent(reactor, contextFactory=policy), "https"
        url_host = f"[{host}]" if ":" in host else host
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            if run.ended.called:
                self.fail(f"twistd exited early:\n{run.text}")
            try:
                response = yield agent.request(b"GET", f"{scheme}://{url_host}:{port}/api/status".encode())
                body = yield readBody(response)
                return response, body
            except (error.ConnectError, error.ConnectionRefusedError):
                yield deferLater(reactor, 0.1)
        self.fail(f"no answer on {port} after {timeout}s:\n{run.text}")

    @defer.inlineCallbacks
    def test_serves_status_and_exits_0_on_sigterm(self):
        env = _env(self.workdir)
        run, transport = self.spawn(env)
        response, body = yield self.get_status(env["STATUS_PORT"], run)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        self.assertEqual(body, b'{"connectors":{},"hub":true,"vaxine":false}')
        self.assertTrue(os.path.exists(os.path.join(self.workdir, "data", "hub.sqlite3")))
        transport.signalProcess("TERM")
        code = yield _with_timeout(run.ended, 5)
        self.assertEqual(code, 0, run.text)
        self.assertNotIn("Traceback", run.text)
        self.assertRegex(run.text, r"electric started: hub, (.*, )?http")

    @defer.inlineCallbacks
    def test_bad_configuration_exits_nonzero_with_every_problem(self):
        env = _env(self.workdir, STATUS_PORT="http", WEBSOCKET_PORT="0",
                   SATELLITE_AUTH_SIGNING_KEY="tooshortsecret",
                   CONNECTORS="a=postgresql://u:hunter2@h:1/d;a=postgresql://u:pw@h/d;b=mysql://x")
        run, _ = self.spawn(env)
        code = yield _with_timeout(run.ended, 60)
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", run.text)
        err = run.err.decode()
        self.assertIn("invalid configuration:", err)
        for expected in ("STATUS_PORT='http': expected a port number from 1 to 65535",
                         "WEBSOCKET_PORT='0': expected a port number",
                         "SATELLITE_AUTH_SIGNING_KEY=<14 bytes hidden>: expected at least 32 bytes",
                         "connector name 'a' appears more than once",
                         "CONNECTORS: b: 'mysql://x'"):
            self.assertIn(expected, err)
        self.assertNotIn("hunter2", run.text)
        self.assertNotIn("tooshortsecret", run.text)
        self.assertFalse(os.path.exists(os.path.join(self.workdir, "data")))

    @defer.inlineCallbacks
    def test_vaxine_host_unreachable_runs_not_ready_and_stops_cleanly(self):
        """VAXINE_HOST selects the Vaxine hub; with nothing listening there it runs, says vaxine false and keeps retrying."""
        closed = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        port = closed.getHost().port
        yield closed.stopListening()
        env = _env(self.workdir, VAXINE_HOST="127.0.0.1", VAXINE_API_PORT=str(port),
                   VAXINE_REPLICATION_PORT=str(port), VAXINE_CONNECTION_TIMEOUT="500")
        run, transport = self.spawn(env)
        response, body = yield self.get_status(env["STATUS_PORT"], run)
        self.assertEqual(body, b'{"connectors":{},"hub":true,"vaxine":false}')
        self.assertTrue(os.path.exists(os.path.join(self.workdir, "data", "hub.sqlite3")))  # the local copy
        transport.signalProcess("TERM")
        code = yield _with_timeout(run.ended, 10)
        self.assertEqual(code, 0, run.text)
        self.assertNotIn("Traceback", run.text)
        self.assertIn(f"Vaxine hub: 127.0.0.1 PB {port} stream {port}", run.text)

    @defer.inlineCallbacks
    def test_status_port_in_use_exits_nonzero(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        taken = blocker.getHost().port
        run, _ = self.spawn(_env(self.workdir, STATUS_PORT=str(taken)))
        code = yield _with_timeout(run.ended, 60)
        self.assertEqual(code, 1, run.text)
        self.assertIn(f"electric cannot start: http: Couldn't listen on 127.0.0.1:{taken}", run.text)
        self.assertNotIn("Traceback", run.text)


    @defer.inlineCallbacks
    def test_every_port_in_use_exits_1_with_one_line(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        taken = blocker.getHost().port
        for variable, name in (("POSTGRES_REPLICATION_PORT", "postgres-publisher"), ("WEBSOCKET_PORT", "satellite")):
            run, _ = self.spawn(_env(self.workdir, **{variable: str(taken)}))
            code = yield _with_timeout(run.ended, 60)
            self.assertEqual(code, 1, run.text)
            lines = [line for line in run.text.splitlines() if "listen" in line.lower() and str(taken) in line]
            self.assertEqual(len(lines), 1, run.text)
            self.assertIn(f"electric cannot start: {name}: Couldn't listen on 127.0.0.1:{taken}", lines[0])
            self.assertNotIn("Traceback", run.text)

    @defer.inlineCallbacks
    def test_ipv6_and_tls_from_the_configuration(self):
        import socket
        import ssl

        try:
            with socket.socket(socket.AF_INET6) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("this machine has no IPv6 loopback (::1)")
        from tests.tls_helpers import TestCA

        ca = TestCA()
        self.addCleanup(ca.cleanup)
        files = ca.server_files(owner=None)
        env = _env(self.workdir, LISTEN_HOST="::1", ELECTRIC_HOST="::1")
        for prefix in ("POSTGRES_REPLICATION", "WEBSOCKET", "STATUS"):
            env[f"{prefix}_TLS_CERT_FILE"] = files.cert
            env[f"{prefix}_TLS_KEY_FILE"] = files.key
        run, transport = self.spawn(env)
        response, body = yield self.get_status(env["STATUS_PORT"], run, host="::1", ca_file=ca.ca_file)
        self.assertEqual((response.code, body), (200, b'{"connectors":{},"hub":true,"vaxine":false}'))

        def probe():
            context = ssl.create_default_context(cafile=ca.ca_file)
            # The websocket port speaks TLS from the first byte ...
            with socket.create_connection(("::1", int(env["WEBSOCKET_PORT"])), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname="::1") as tls:
                    tls.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
                    ws = tls.recv(12)
            # ... port 5433 answers the SSLRequest with S and then talks TLS.
            with socket.create_connection(("::1", int(env["POSTGRES_REPLICATION_PORT"])), timeout=10) as raw:
                raw.sendall(bytes.fromhex("0000000804d2162f"))
                answer = raw.recv(1)
                with context.wrap_socket(raw, server_hostname="::1") as tls:
                    version = tls.version()
            return ws, answer, version

        ws, answer, version = yield deferToThread(probe)
        self.assertEqual(ws, b"HTTP/1.1 101")
        self.assertEqual(answer, b"S")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        self.assertIn("listening on https://[::1]:", run.text)
        self.assertIn("listening on wss://[::1]:", run.text)
        transport.signalProcess("TERM")
        code = yield _with_timeout(run.ended, 10)
        self.assertEqual(code, 0, run.text)

    @defer.inlineCallbacks
    def test_electric_run_is_twistd(self):
        env = _env(self.workdir)
        run, transport = self.spawn(env, [sys.executable, "-m", "electric", "run"])
        response, body = yield self.get_status(env["STATUS_PORT"], run)
        self.assertEqual(body, b'{"connectors":{},"hub":true,"vaxine":false}')
        transport.signalProcess("TERM")
        code = yield _with_timeout(run.ended, 5)
        self.assertEqual(code, 0, run.text)


class CommandLineTests(unittest.TestCase):
    def electric(self, *args, **env):
        return subprocess.run([sys.executable, "-m", "electric", *args], capture_output=True, text=True,
                              timeout=60, cwd=tempfile.gettempdir(), env=dict(os.environ, PYTHONPATH=ROOT, **env))

    def test_help_lists_the_commands(self):
        proc = self.electric("--help")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        for command in ("run", "gen-token", "apply-migration"):
            self.assertIn(command, proc.stdout)

    def test_unknown_or_missing_command(self):
        proc = self.electric("frobnicate")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("invalid choice: 'frobnicate'", proc.stderr)
        proc = self.electric()
        self.assertEqual(proc.returncode, 2)
        self.assertIn("usage: electric", proc.stderr)

    def test_subcommands_dispatch(self):
        proc = self.electric("gen-token", "--help")
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("usage: electric gen-token", proc.stdout)
        proc = self.electric("apply-migration")
        self.assertEqual(proc.returncode, 1)
        self.assertIn("usage: electric apply-migration NAME", proc.stderr)

    def test_console_script_is_installed(self):
        self.assertTrue(os.access(os.path.join(BIN, "electric"), os.X_OK))


class ServiceTreeTests(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="electric-tree-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        self.config = Config(status_port=free_port(), websocket_port=free_port(),
                             postgres_replication_port=free_port(), listen_host="127.0.0.1",
                             data_dir=os.path.join(self.workdir, "data"),
                             offset_storage_file=os.path.join(self.workdir, "offsets.dat"),
                             migrations_dir=os.path.join(self.workdir, "migrations"))

    def test_building_starts_nothing(self):
        root = build_service(self.config, reactor)
        self.assertIsInstance(root, ElectricService)
        names = [s.name for s in root]
        self.assertEqual(names[0], "hub")  # everything else writes into it: first to start, last to stop
        self.assertIn("http", names)
        self.assertFalse(any(s.running for s in root))
        self.assertFalse(os.path.exists(os.path.join(self.config.data_dir, "hub.sqlite3")))
        # nothing touches the disk before startService (twistd daemonises in between)
        self.assertEqual(os.listdir(self.workdir), [])
        api = root.getServiceNamed("http").api
        self.assertIs(api.hub, root.getServiceNamed("hub"))
        self.assertEqual(dict(api.connectors), {})
        self.assertEqual(names, ["hub", "offsets", "subscriber-credentials", "quarantine", "apply-failures", "http",
                                 "postgres-publisher",
                                 "satellite", "migrations"])

    def test_vaxine_host_selects_the_vaxine_hub(self):
        from electric.vaxine.hub import VaxineHub
        config = Config(vaxine_host="vaxine.example", vaxine_api_port=18087, vaxine_replication_port=18088,
                        vaxine_connection_timeout_ms=1500, data_dir=self.config.data_dir)
        root = build_service(config, reactor)
        hub = root.getServiceNamed("hub")
        self.assertIsInstance(hub, VaxineHub)
        self.assertEqual((hub.host, hub.api_port, hub.replication_port, hub.connect_timeout),
                         ("vaxine.example", 18087, 18088, 1.5))
        self.assertIs(root.getServiceNamed("http").api.vaxine, hub)
        self.assertFalse(any(s.running for s in root))
        self.assertEqual(os.listdir(self.workdir), [])  # nothing connects or touches the disk before start

    @defer.inlineCallbacks
    def test_start_serve_stop(self):
        root = build_service(self.config, reactor)
        root.startService()
        stopped = False
        try:
            yield root.getServiceNamed("http").listening
            self.assertTrue(root.getServiceNamed("hub").running)
            agent = Agent(reactor)
            response = yield agent.request(b"GET", f"http://127.0.0.1:{self.config.status_port}/api/status".encode())
            body = yield readBody(response)
            self.assertEqual(json.loads(body), {"connectors": {}, "hub": True, "vaxine": False})
            yield root.stopService()
            stopped = True
            self.assertFalse(root.getServiceNamed("hub").running)
            self.assertFalse(root.getServiceNamed("http").running)
            with self.assertRaises(Exception):
                yield agent.request(b"GET", f"http://127.0.0.1:{self.config.status_port}/api/status".encode())
        finally:
            if not stopped:
                yield root.stopService()


    @defer.inlineCallbacks
    def test_a_child_that_cannot_start_is_reported(self):
        blocker = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        self.addCleanup(blocker.stopListening)
        config = dataclasses.replace(self.config, status_port=blocker.getHost().port)
        root = build_service(config, reactor)
        self.assertFalse(root.exit_on_failure)
        root.startService()
        self.addCleanup(root.stopService)
        # the root consumed the listening failure and kept it
        self.assertTrue(root.getServiceNamed("http").listening.called)
        self.assertTrue(root.failure.check(error.CannotListenError))
        yield root.stopService()
        self.assertFalse(root.getServiceNamed("hub").running)


class PackagingTests(unittest.TestCase):
    """`pip install .` must ship twisted/plugins/electric_plugin.py (and no __init__.py there)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="electric-wheel-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def _pip(self, *args):
        return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)

    def _wheel(self):
        out = os.path.join(self.tmp, "dist")
        proc = self._pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        [name] = [n for n in os.listdir(out) if n.endswith(".whl")]
        return os.path.join(out, name)

    @defer.inlineCallbacks
    def test_wheel_ships_the_plugin_and_it_is_found_from_the_install(self):
        wheel = yield deferToThread(self._wheel)
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/electric_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("electric/service.py", names)
        self.assertFalse([n for n in names if "__pycache__" in n or n.startswith("tests/")])
        target = os.path.join(self.tmp, "site")
        proc = yield deferToThread(self._pip, "install", "--no-deps", "--no-index", "-q", "--target", target, wheel)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        # -S: no .pth processing, so the checkout (an editable install) is not on
        # the path; only the installed copy and the venv's plain site-packages are.
        site_packages = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(defer.__file__))))
        code = ("from twisted.plugin import getPlugins\n"
                "from twisted.application.service import IServiceMaker\n"
                "import sys\n"
                "[m] = [p for p in getPlugins(IServiceMaker) if p.tapname == 'electric']\n"
                "print(sys.modules[type(m).__module__].__file__)\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = os.pathsep.join([target, site_packages])
        proc = yield deferToThread(subprocess.run, [sys.executable, "-S", "-c", code], capture_output=True,
                                   text=True, timeout=120, cwd=self.tmp, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertEqual(proc.stdout.strip(), os.path.join(target, "twisted", "plugins", "electric_plugin.py"))

    def test_checkout_plugin_is_visible_outside_the_checkout(self):
        """What `pip install -e .` (make deps) gives: the plugin without PYTHONPATH, from any directory."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        code = ("from twisted.plugin import getPlugins\n"
                "from twisted.application.service import IServiceMaker\n"
                "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=self.tmp, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("'electric'", proc.stdout)


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


class RepositoryFilesTests(unittest.TestCase):
    """README, Makefile, CI script and docker files stay consistent with config.VARIABLES."""

    def test_readme_has_the_two_commands_and_the_generated_table(self):
        from electric.config import environment_markdown

        readme = _read("README.md")
        self.assertIn("`make run`", readme)
        self.assertIn("`make tests`", readme)
        self.assertIn(environment_markdown(), readme)
        for name in VARIABLES:
            self.assertIn(f"`{name}`", readme)

    def test_makefile_targets(self):
        makefile = _read("Makefile")
        for target in ("deps", "compile", "tests", "start_dev_env", "stop_dev_env", "shell", "run",
                       "apply_migration", "docker-build", "bench", "clean"):
            self.assertRegex(makefile, rf"(?m)^{target}:")

    def test_apply_migration_needs_a_name(self):
        proc = subprocess.run(["make", "--no-print-directory", "apply_migration"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("usage: make apply_migration name=<migration>", proc.stdout)

    def test_ci_script_runs_make_tests(self):
        path = os.path.join(ROOT, ".ci", "run")
        self.assertTrue(os.access(path, os.X_OK))
        script = _read(".ci", "run")
        self.assertIn("set -euo pipefail", script)
        self.assertRegex(script, r"(?m)^make tests\b")

    def test_docker_files_use_only_known_variables_and_the_default_ports(self):
        import re

        dockerfile = _read("docker", "Dockerfile")
        compose = _read("docker", "compose.yaml")
        env_block = dockerfile.split("ENV ELECTRIC_DATA_DIR", 1)[1].split("VOLUME", 1)[0]
        names = {"ELECTRIC_DATA_DIR"} | set(re.findall(r"\b([A-Z_]+)=", env_block))
        electric = compose.split("\n  electric:\n", 1)[1]
        environment = electric.split("environment:\n", 1)[1].split("    ports:", 1)[0]
        names |= set(re.findall(r"(?m)^\s+#?\s*([A-Z_]+):", environment))
        self.assertTrue(names)
        self.assertEqual(names - set(VARIABLES), set())
        self.assertIn("ELECTRIC_HOST: electric", environment)
        ports = [VARIABLES[v][0] for v in ("STATUS_PORT", "WEBSOCKET_PORT", "POSTGRES_REPLICATION_PORT")]
        self.assertIn("EXPOSE " + " ".join(ports), dockerfile)
        for port in ports:
            self.assertIn(f'"{port}:{port}"', electric)
        self.assertIn('CMD ["twistd", "-n", "--pidfile=", "electric"]', dockerfile)
        self.assertRegex(dockerfile, r"(?m)^USER electric$")
        self.assertEqual(compose.count("image: postgres:15"), 1)  # one anchor shared by db_a and db_b
        self.assertEqual(compose.count("<<: *postgres"), 2)
        self.assertIn("wal_level=logical", compose)
