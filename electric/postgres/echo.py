"""
What Electric knows, per connector, to leave out echoes its database does not need.

Electric sends every resolved transaction to every database, its origin
included.  Sending a row back to the database that wrote it is redundant
exactly when the database already holds the resolved row and no older
version of it can reach the database afterwards (rule: `ResolvedChange.origin_holds`
in `electric.hub.interface`).  Three parts cooperate through this ledger:

* the connector reads, in its database's WAL, the Origin message of every
  transaction Electric's subscription applied (``pg_<suboid>``, origin_lsn =
  the port-5433 LSN applied) and hands the hub, with each transaction, the
  highest hub position applied before it committed (`OriginApplied`), under
  a *marker* naming the subscription and the LSN mapping it was read with;
* the hub decides per row (`origin_holds` = that marker, or None);
* the port-5433 stream of that database leaves out a change only when its
  own current marker equals the change's.

The marker is ``pg_<suboid>@<base>``: a re-created subscription (new oid) or
a re-based LSN mapping (the hub's data was replaced; `electric.hub.positions`)
makes every earlier decision void, because then the database may apply
older hub positions again.  The one other way a database can go back -- its
subscription's origin progress moved backwards (re-created outside Electric,
or rewound by an operator) -- shows as a START_REPLICATION below an LSN the
connector saw it apply: the ledger then stops all leaving-out for that
subscription for the rest of the process (`stream_starting`), and says so.
Being wrong in the safe direction costs only an echo; nothing here can make
Electric leave out a change the rule does not allow.

In memory only: a restart forgets everything, and the connector learns
again from the WAL it reads (conservatively: Origin messages before its
flushed position are not seen again).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Set, Tuple

from twisted.logger import Logger

log = Logger(namespace="electric.postgres.echo")


class EchoLedger:
    """
    Shared by the connectors (which learn) and the port-5433 publisher
    (which asks).  `base_for(origin)` is the publisher's LSN base of that
    origin's stream.
    """

    def __init__(self, base_for: Callable[[str], int]):
        self.base_for = base_for
        self._subscription: Dict[str, int] = {}
        self._seen: Dict[Tuple[str, int], int] = {}  # (origin, suboid) -> highest applied LSN seen in its WAL
        self._regressed: Set[Tuple[str, int]] = set()

    def subscription(self, origin: str, suboid: Optional[int]) -> None:
        """The connector of `origin` set up (or found) its subscription with this oid."""
        if suboid is None:
            self._subscription.pop(origin, None)
        else:
            self._subscription[origin] = int(suboid)

    def saw_applied(self, origin: str, suboid: int, lsn: int) -> None:
        """The database of `origin` committed an apply of Electric's stream up to `lsn` (an Origin message)."""
        key = (origin, int(suboid))
        if lsn > self._seen.get(key, 0):
            self._seen[key] = lsn

    def marker(self, origin: str, base: Optional[int] = None) -> Optional[str]:
        """The current marker of `origin`'s subscription, or None when nothing may be left out."""
        suboid = self._subscription.get(origin)
        if suboid is None or (origin, suboid) in self._regressed:
            return None
        if base is None:
            base = self.base_for(origin)
        return f"pg_{suboid}@{base:x}"

    def stream_starting(self, origin: str, lsn: int) -> None:
        """
        The subscription of `origin` asks to stream from `lsn` (its origin
        progress).  Below an LSN its database was seen to apply, the
        progress went backwards: from now on nothing is left out for it.
        """
        suboid = self._subscription.get(origin)
        if suboid is None:
            return
        seen = self._seen.get((origin, suboid), 0)
        if lsn < seen and (origin, suboid) not in self._regressed:
            self._regressed.add((origin, suboid))
            log.warn("subscription pg_{suboid} of {origin} restarts from {lsn:#x}, below {seen:#x} which its database"
                     " had applied (re-created or rewound?): Electric echoes every transaction to it from now on",
                     suboid=suboid, origin=origin, lsn=lsn, seen=seen)

    def status(self, origin: str) -> dict:
        suboid = self._subscription.get(origin)
        return {
            "marker": self.marker(origin) if suboid is not None else None,
            "applied_lsn_seen": self._seen.get((origin, suboid), 0) if suboid is not None else 0,
            "regressed": suboid is not None and (origin, suboid) in self._regressed,
        }
