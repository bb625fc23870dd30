"""
The `electric` twistd plugin: `twistd -n electric` runs the service
configured by the environment (`twistd electric --help` lists it).

Twisted imports every plugin module whenever anyone looks for plugins, so
this module imports nothing of Electric until a command needs it.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    synopsis = "[--help]   (configured by environment variables, see below)"
    longdesc = (
        "Runs Electric: reads each Postgres in CONNECTORS over logical replication, "
        "serves them as a publisher on POSTGRES_REPLICATION_PORT, serves Satellite "
        "clients on WEBSOCKET_PORT and the HTTP API on STATUS_PORT."
    )

    def getUsage(self, width=None):
        from electric.config import environment_help

        return super().getUsage(width) + "\n" + environment_help()


@implementer(IServiceMaker, IPlugin)
class ElectricServiceMaker:
    tapname = "electric"
    description = "Active-active replication between Postgres databases and Satellite clients."
    options = Options

    def makeService(self, options):
        """
        A bad configuration exits here, before logging starts, with the
        aggregated message alone (SystemExit prints it without a traceback).
        """
        from twisted.internet import reactor

        from electric import logs
        from electric.config import Config, ConfigError
        from electric.service import build_service, exit_zero_on_sigterm

        try:
            config = Config.from_environ()
            root = build_service(config, reactor)
        except ConfigError as e:
            raise SystemExit(f"electric: {e}")
        # LOG_FORMAT / LOG_LEVEL, written where twistd would write its log.
        out = logs.twistd_output(getattr(options, "parent", None) or {})
        if out is not None:
            root.log_observer = logs.observer(config, out)
        root.exit_on_failure = True
        exit_zero_on_sigterm(reactor)
        return root


serviceMaker = ElectricServiceMaker()
