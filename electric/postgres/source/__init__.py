"""
Postgres in: each database in CONNECTORS, read over logical replication.

`connector` (the ConnectorService: setup, stream, backoff), `setup` (what
Electric installs in each database), `session` (the replication client's
protocol as a sans-IO state machine: TLS by sslmode, login, stream),
`replication` (the Twisted protocol that moves its bytes), `assembly`
(decoded pgoutput -> hub transactions, in-order acks) and `importer` (the
rows a database already holds, copied in the slot's exported snapshot).
"""
