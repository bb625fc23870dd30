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
=====================  ==========================================================

Where the spec and the real node (commit bba3ec39) were found to differ, the
node wins and the module concerned says so.
"""
