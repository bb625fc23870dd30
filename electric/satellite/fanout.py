"""
One shared hub cursor for every Satellite client at the head of the log.

With thousands of clients connected, pulling the hub once per client and
encoding every transaction once per client costs far more than writing the
bytes.  So the clients that are *caught up* -- streaming live, at the same
position as this cursor, at a transaction boundary, their socket taking
more and no append of theirs pending -- are fed by one subscription: each
answer of the hub is handed to all of them in the same reactor turn with one
`FrameCache`, so each transaction is encoded once per (protocol generation,
visibility class) and framed once (`SharedFrame`).

Flow control is unchanged for each client: a client whose socket pushes back
(its transport paused us), that stopped wanting transactions (an append of
its own in flight) or that left is detached at once and goes on with a hub
subscription of its own from the last transaction it was handed, pulling
only while its socket takes more -- the hub is the buffer, never Electric's
memory.  A detached client that catches up joins again.  A client detached
in the middle of a big transaction (items with ``more``) resumes at that
transaction's start and drops the changes it already had
(`ClientConnection._trim`).

The cursor pulls only while at least one client is attached, and closes its
subscription when the last one leaves.  Not a service: it lives and dies
with `SatelliteService`.
"""

from __future__ import annotations

from typing import Dict, Optional, Set

from twisted.logger import Logger

from electric.hub.interface import HubError, SubscriptionClosed
from electric.satellite import session as sm

log = Logger()


class Fanout:
    """`hub`: an IHub; `batch`: most items asked for per pull (the hub bounds the changes itself)."""

    def __init__(self, hub, batch: int):
        self.hub = hub
        self.batch = batch
        self.clients: Dict[object, None] = {}  # attached connections, in attach order
        self.watching: Set[object] = set()  # detached connections waiting on their own pull: may join
        self.position: Optional[int] = None  # last complete transaction handed to the attached clients
        self.open: Optional[int] = None  # position of a transaction handed out in part (more items follow)
        self._sub = None
        self._pulling = False
        self.deliveries = 0

    # --- membership -----------------------------------------------------

    def attach(self, conn, position: int) -> bool:
        """
        Feed `conn` (complete up to `position`, at a transaction boundary)
        from the shared cursor, if the cursor is there too (or starts there:
        the first client opens it).  False: pull on your own.
        """
        if self._sub is None:
            try:
                self._sub = self.hub.subscribe(position)
            except HubError:
                return False  # the client's own subscribe reports it
            self.position = position
            self.open = None
        elif position != self.position or self.open is not None:
            return False
        self.clients[conn] = None
        conn._attached = True
        self.watching.discard(conn)
        self._pull()  # may deliver at once (and the client may leave again)
        return True

    def detach(self, conn) -> None:
        self.watching.discard(conn)
        if self.clients.pop(conn, 0) is None and not self.clients:
            self.close()

    def watch(self, conn) -> None:
        self.watching.add(conn)

    def unwatch(self, conn) -> None:
        self.watching.discard(conn)

    def close(self) -> None:
        sub, self._sub = self._sub, None
        self._pulling = False
        self.position = None
        self.open = None
        if sub is not None:
            sub.close()

    @property
    def attached(self) -> int:
        return len(self.clients)

    # --- the pull loop ----------------------------------------------------

    def _pull(self) -> None:
        if self._pulling or self._sub is None or not self.clients:
            return
        sub = self._sub
        self._pulling = True
        try:
            d = sub.next(self.batch)
        except Exception as e:  # a broken hub must not break the reactor turn
            from twisted.internet import defer
            d = defer.fail(e)
        d.addCallbacks(self._got, self._failed, callbackArgs=(sub,), errbackArgs=(sub,))
        d.addErrback(lambda f: log.failure("satellite: shared delivery", f))

    def _got(self, items, sub) -> None:
        if sub is not self._sub:
            return
        self._pulling = False
        for item in items:
            if item.more:
                self.open = item.position
            else:
                self.position = item.position
                self.open = None
        self.deliveries += 1
        cache = sm.FrameCache()
        for conn in list(self.clients):
            conn.shared(items, cache)
        if self.watching and self.open is None and self._sub is not None:
            for conn in list(self.watching):
                conn.join_if_caught_up()
        self._pull()

    def _failed(self, failure, sub) -> None:
        if sub is not self._sub:
            return None
        self._sub = None
        self._pulling = False
        if failure.check(SubscriptionClosed):
            reason = "hub subscription closed"
        else:
            log.failure("satellite: the shared hub subscription failed", failure)
            reason = failure.getErrorMessage()
        clients = list(self.clients)
        self.clients.clear()
        self.position = None
        self.open = None
        for conn in clients:
            conn.shared_failed(reason)
        return None
