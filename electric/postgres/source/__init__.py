"""
Postgres in: each database in CONNECTORS, read over logical replication.

`connector` (the ConnectorService: setup, stream, backoff), `setup` (what
Electric installs in each database), `replication` (the streaming client)
and `assembly` (decoded pgoutput -> hub transactions, in-order acks).
"""
