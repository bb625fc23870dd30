"""
The Vaxine links: Electric's optional hub in Vaxine, the AntidoteDB-based CRDT database.

Vaxine is reached over two TCP links (spec: ../shared/spec/vaxine.md):

* the **PB API** (``VAXINE_API_PORT``, default 8087), the write path:
  Antidote protocol buffers, request/response;
* the **replication stream** (``VAXINE_REPLICATION_PORT``, default 8088), the
  read path: Erlang terms, every committed transaction in commit order.

Modules, pure ones first (no sockets, no reactor):

=====================  ==========================================================
`etf`                  Erlang external term format encoder/decoder
`framing`              ``{packet, 4}`` length-prefixed frames (both links)
`antidote`             PB API frames, requests, reply checks, read values
`stream`               replication-stream terms, offsets, client state machine
`crdt`                 reading Antidote CRDT states/effects (map_rr, lww, flag_dw)
`datamodel`            hub Transaction <-> Vaxine objects (rows:..., metadata:0)
`errors`               the exception hierarchy (`VaxineError` and kinds)
`connection`           the reconnect loop (connect timeout, backoff with jitter)
`pb_client`            Twisted: `AntidoteClient` service, interactive transactions
`replication`          Twisted: `ReplicationClient` service (push producer), `WalQueue`
`records`              Electric's transaction records (what the Vaxine hub writes and reads back)
`hub`                  `VaxineHub`: the IHub on Vaxine (``VAXINE_HOST`` set)
=====================  ==========================================================

`hub.VaxineHub` is the ``IHub`` built from these parts (see its docstring and
the README's "Vaxine" section).  Using the links directly:

* Writing: ``AntidoteClient.from_config(config)`` (an ``IService``);
  ``client.write(datamodel.transaction_updates(txn))`` runs one interactive
  transaction (start, one ApbUpdateObjects, commit) and fires with the commit
  clock, or fails with a `errors.VaxineError`: retry the *whole* transaction
  on failure (a re-sent ``(origin, origin_id)`` rewrites the same metadata
  object, see `datamodel.metadata_key`).  ``client.ping()`` is the liveness
  probe, ``client.connected`` the status.
* Reading: ``ReplicationClient.from_config(config, consumer, offset)`` (an
  ``IService`` and ``IPushProducer``) hands each `stream.WalTransaction` to
  ``consumer.transactionReceived`` in commit order; `replication.WalQueue`
  turns that into ``next(max_items)`` pulls with back-pressure.
  ``datamodel.from_wal(txn)`` gives ``origin``, ``origin_id``,
  ``commit_timestamp`` and the converged rows (``ResolvedChange``), or raises
  ``ForeignTransaction``/``InvalidWalTransaction`` (log and skip).
* Positions: the stream has no acknowledgements; the consumer stores the
  offset of what it has durably processed (`stream.offset_to_bytes`) and
  restarts with it (`stream.offset_from_bytes`); resumption is exclusive.

Where the spec and the real node (commit bba3ec39) were found to differ, the
node wins and the module concerned says so: the streamed materialized state
is sometimes the state from before the transaction (`crdt`, `datamodel`), and
one register update can stamp several nested assigns alike (tests/fake_vaxine.py).
The shared ``metadata:0`` object of the spec makes the node's catch-up
quadratic, so Electric writes one metadata object per transaction (`datamodel`).
"""
