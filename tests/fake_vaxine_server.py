"""
tests/fake_vaxine.py as a process of its own, for end-to-end tests whose Electrics are child processes.

    python -m tests.fake_vaxine_server PORTFILE

It listens on two free loopback ports, writes ``"<pb> <repl>\\n"`` to PORTFILE
once both accept, and runs until SIGTERM.  SIGUSR1 drops both listeners and
every connection (Vaxine gone); SIGUSR2 listens again on the same ports with
the same in-memory state (Vaxine back, recovered from its log).  This is a
FAKE (state in memory, see tests/fake_vaxine.py), used only where the real
node is absent.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.internet import reactor

from tests.fake_vaxine import FakeVaxine


def main(portfile: str) -> None:
    fake = FakeVaxine()
    ports = {}

    def up():
        ports["pb"], ports["repl"] = fake.listen(ports.get("pb", 0), ports.get("repl", 0))

    def write_ports():
        tmp = portfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{ports['pb']} {ports['repl']}\n")
        os.replace(tmp, portfile)

    def on_usr1(*_):
        reactor.callFromThread(fake.stop)

    def on_usr2(*_):
        reactor.callFromThread(up)

    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    up()
    reactor.callWhenRunning(write_ports)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
