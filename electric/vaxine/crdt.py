"""
Reading (and, for the fake node in tests, building) Antidote CRDT states and effects as ETF terms.

The replication stream sends each touched object's *internal* state and the
effects the transaction logged for it (spec 3.3).  Only the three types
Electric writes are covered:

* ``antidote_crdt_map_rr`` (RRMAP): state is an Erlang ``dict`` of
  ``{Name, TypeAtom} => NestedState``; effect is ``{Updates, Removes}`` with
  ``Updates = [{{Name, Type}, {ok, NestedEffect}}]``.
* ``antidote_crdt_register_lww`` (LWWREG): state and effect are
  ``{TimestampMicros, ValueBinary}``.
* ``antidote_crdt_flag_dw`` (FLAG_DW): state is ``{EnableTokens,
  DisableTokens}``; effect is ``{Seen, NewEnable, NewDisable}``.

An Erlang ``dict`` is the 9-tuple ``{dict, Size, N, MaxN, BSo, ExpSize,
ConSize, Empty, Segs}``; only ``Segs`` (a tuple of segments, each a tuple of
bucket lists of ``[Key | Value]`` cells) holds entries, so `dict_items`
reads nothing else.  `make_dict` builds a structurally valid dict for the
fake node; it places entries by its own hash, not Erlang's ``phash``, so its
bucket layout differs from a real node's (which no reader depends on).

`state_from_term` turns a state term into plain Python (a map is a ``dict``
of ``(name, type atom) -> nested state``, a register ``(ts, value)``, a flag
``(enable list, disable list)``) and `apply_effect` applies an effect to such
a state, with Antidote's update rules.  The reader needs both because the
real node does not always do what spec 3.3 says: the materialized state it
streams is *sometimes the state before the transaction* (checked on Vaxine
bba3ec39: an empty state for a row the transaction created, or a row without
the column it just wrote -- about 3% of strictly sequential transactions and
40% of concurrent ones).  Applying the transaction's own effects to the
streamed state gave the complete state in every case observed; re-applying
effects a state already holds changes no value (registers keep the larger
``(ts, value)``, a flag at most lists a token twice).

Errors are `CrdtError` (a ``ValueError``) naming what was expected.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List, Sequence, Tuple

from electric.vaxine import antidote, etf
from electric.vaxine.etf import Atom, ImproperList

MAP_RR = Atom("antidote_crdt_map_rr")
REGISTER_LWW = Atom("antidote_crdt_register_lww")
FLAG_DW = Atom("antidote_crdt_flag_dw")
DICT = Atom("dict")
OK = Atom("ok")
NONE = Atom("none")

TYPE_ATOMS = {
    antidote.COUNTER: Atom("antidote_crdt_counter_pn"),
    antidote.ORSET: Atom("antidote_crdt_set_aw"),
    antidote.LWWREG: REGISTER_LWW,
    antidote.MVREG: Atom("antidote_crdt_register_mv"),
    antidote.GMAP: Atom("antidote_crdt_map_go"),
    antidote.RWSET: Atom("antidote_crdt_set_rw"),
    antidote.RRMAP: MAP_RR,
    antidote.FATCOUNTER: Atom("antidote_crdt_counter_fat"),
    antidote.FLAG_EW: Atom("antidote_crdt_flag_ew"),
    antidote.FLAG_DW: FLAG_DW,
    antidote.BCOUNTER: Atom("antidote_crdt_counter_b"),
}
"""PB CRDT_type number -> the server's type module (the atom in stream terms)."""
PB_TYPES = {a: n for n, a in TYPE_ATOMS.items()}

SEGMENT_SIZE = 16
EXPAND_LOAD = 5
CONTRACT_LOAD = 3


class CrdtError(ValueError):
    """A state or effect term that does not have the shape its type requires."""


def _short(term: Any, limit: int = 100) -> str:
    text = repr(term)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- Erlang dict


def dict_items(term: Any) -> List[Tuple[Any, Any]]:
    """The ``(key, value)`` entries of an Erlang dict term, in storage order."""
    if not (isinstance(term, tuple) and len(term) == 9 and term[0] == DICT and isinstance(term[8], tuple)):
        raise CrdtError(f"expected an Erlang dict {{dict, ..., Segs}}, got {_short(term)}")
    items = []
    for segment in term[8]:
        if not isinstance(segment, tuple):
            raise CrdtError(f"dict segment is not a tuple: {_short(segment)}")
        for bucket in segment:
            if not isinstance(bucket, list):
                raise CrdtError(f"dict bucket is not a list: {_short(bucket)}")
            for cell in bucket:
                try:
                    items.append(etf.cons_cell(cell))
                except etf.ETFError as e:
                    raise CrdtError(f"dict entry: {e}") from None
    if isinstance(term[1], int) and term[1] != len(items):
        raise CrdtError(f"dict claims {term[1]} entries but holds {len(items)}")
    return items


def _slot(key: Any, n: int) -> int:
    return zlib.crc32(etf.term_to_binary(key)) % n


def make_dict(items: Sequence[Tuple[Any, Any]]) -> tuple:
    """An Erlang-dict-shaped term holding `items` (distinct keys), sized like ``dict`` grows."""
    size = len(items)
    n, max_n, bso = SEGMENT_SIZE, SEGMENT_SIZE, SEGMENT_SIZE // 2
    while size > n * EXPAND_LOAD:
        n += 1
        if n > max_n:
            max_n, bso = max_n * 2, bso * 2
    buckets: List[List[Any]] = [[] for _ in range(max_n)]
    for key, value in items:
        cell = [key] + value if isinstance(value, list) else ImproperList((key,), value)
        buckets[_slot(key, n)].insert(0, cell)
    segments = tuple(tuple(buckets[i:i + SEGMENT_SIZE]) for i in range(0, max_n, SEGMENT_SIZE))
    empty = tuple([] for _ in range(SEGMENT_SIZE))
    return (DICT, size, n, max_n, bso, n * EXPAND_LOAD, n * CONTRACT_LOAD, empty, segments)


# --------------------------------------------------------------------------- states


def _map_key(key: Any) -> Tuple[bytes, Atom]:
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], bytes) and isinstance(key[1], Atom):
        return key
    raise CrdtError(f"map key is not {{Name, Type}}: {_short(key)}")


def map_rr_entries(state: Any) -> Dict[Tuple[bytes, Atom], Any]:
    """RRMAP state -> ``{(name, type atom): nested state}``."""
    return {_map_key(k): v for k, v in dict_items(state)}


def register_lww(state: Any) -> Tuple[int, bytes]:
    """LWW register state (or effect) -> ``(timestamp micros, value)``."""
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], int) and isinstance(state[1], bytes):
        return state
    raise CrdtError(f"LWW register is not {{Timestamp, Binary}}: {_short(state)}")


def flag_dw_enabled(state: Any) -> bool:
    """Disable-wins flag state -> enabled: some enable token and no disable token survives.

    (spec 4.1 words it as "deleted = DisableTokens minus EnableTokens is
    empty"; both agree on every state a row object can reach, since a flag
    with no tokens at all is bottom and leaves the map.)
    """
    if (isinstance(state, tuple) and len(state) == 2
            and isinstance(state[0], list) and isinstance(state[1], list)):
        enable, disable = state
        return bool(enable) and not disable
    raise CrdtError(f"disable-wins flag is not {{EnableTokens, DisableTokens}}: {_short(state)}")


def value(ctype: Atom, state: Any) -> Any:
    """The client-facing value of a state, shaped like `antidote.read_value` gives it.

    A map is ``{(name, PB type number): value}``, a register ``bytes``, a flag
    ``bool``.  Lets a test compare what the stream carries with a PB read.
    """
    if ctype == MAP_RR:
        result = {}
        for (name, ntype), nested in map_rr_entries(state).items():
            if ntype not in PB_TYPES:
                raise CrdtError(f"map entry {name!r} of unsupported type {ntype.name}")
            result[(name, PB_TYPES[ntype])] = value(ntype, nested)
        return result
    if ctype == REGISTER_LWW:
        return register_lww(state)[1]
    if ctype == FLAG_DW:
        return flag_dw_enabled(state)
    raise CrdtError(f"unsupported CRDT type {ctype.name if isinstance(ctype, Atom) else _short(ctype)}")


# --------------------------------------------------------------------------- plain states and effects


def _bottom(ctype: Atom):
    if ctype == REGISTER_LWW:
        return (0, b"")
    if ctype == FLAG_DW:
        return ([], [])
    if ctype == MAP_RR:
        return {}
    raise CrdtError(f"unsupported CRDT type {ctype.name if isinstance(ctype, Atom) else _short(ctype)}")


def is_bottom(ctype: Atom, state: Any) -> bool:
    """The state an RRMAP entry is dropped at (never written / fully reset)."""
    return state == _bottom(ctype)


def state_from_term(ctype: Atom, term: Any) -> Any:
    """A state term as plain Python (see the module docstring), validated."""
    if ctype == MAP_RR:
        return {key: state_from_term(key[1], nested) for key, nested in map_rr_entries(term).items()}
    if ctype == REGISTER_LWW:
        return register_lww(term)
    if ctype == FLAG_DW:
        flag_dw_enabled(term)
        return (list(term[0]), list(term[1]))
    _bottom(ctype)
    raise AssertionError("unreachable")


def apply_effect(ctype: Atom, effect: Any, state: Any) -> Any:
    """`state` (plain) after `effect` (a term, as logged), like Antidote's ``update/2``."""
    if ctype == REGISTER_LWW:
        ts, value = register_lww(effect)
        return (ts, value) if (ts, value) > tuple(state) else state
    if ctype == FLAG_DW:
        if not (isinstance(effect, tuple) and len(effect) == 3 and all(isinstance(x, list) for x in effect)):
            raise CrdtError(f"flag effect is not {{Seen, Enable, Disable}}: {_short(effect)}")
        seen, new_enable, new_disable = effect
        return ([t for t in list(state[0]) + new_enable if t not in seen],
                [t for t in list(state[1]) + new_disable if t not in seen])
    if ctype == MAP_RR:
        updates, removes = map_rr_effect(effect)
        result = dict(state)
        for key, nested in updates:
            result[key] = apply_effect(key[1], nested, result.get(key, _bottom(key[1])))
        for key, reset in removes:
            if reset is not None and key in result:
                result[key] = apply_effect(key[1], reset, result[key])
        return {k: v for k, v in result.items() if not is_bottom(k[1], v)}
    _bottom(ctype)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- effects


def map_rr_effect(effect: Any) -> Tuple[List[Tuple[Tuple[bytes, Atom], Any]], List[Tuple[Tuple[bytes, Atom], Any]]]:
    """RRMAP effect -> ``(updates, removes)``, each a list of ``((name, type), nested)``.

    An update's nested item is the nested effect (the ``{ok, E}`` unwrapped);
    a remove's is its reset effect or None (for ``none``).
    """
    if not (isinstance(effect, tuple) and len(effect) == 2
            and isinstance(effect[0], list) and isinstance(effect[1], list)):
        raise CrdtError(f"map effect is not {{Updates, Removes}}: {_short(effect)}")
    updates = []
    for entry in effect[0]:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], tuple)
                and len(entry[1]) == 2 and entry[1][0] == OK):
            raise CrdtError(f"map effect update is not {{Key, {{ok, Effect}}}}: {_short(entry)}")
        updates.append((_map_key(entry[0]), entry[1][1]))
    removes = []
    for entry in effect[1]:
        if isinstance(entry, tuple) and len(entry) == 2 and entry[1] == NONE:
            removes.append((_map_key(entry[0]), None))
        elif (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], tuple)
              and len(entry[1]) == 2 and entry[1][0] == OK):
            removes.append((_map_key(entry[0]), entry[1][1]))
        else:
            raise CrdtError(f"map effect removal is not {{Key, {{ok, Effect}} | none}}: {_short(entry)}")
    return updates, removes
