"""
The Postgres wire formats, sans-IO: bytes in, messages out, and back.

Used by both directions (`electric.postgres.source` is a Postgres client,
`electric.postgres.publisher` a Postgres server); nothing here opens a
socket, starts a timer or touches the hub.
"""
