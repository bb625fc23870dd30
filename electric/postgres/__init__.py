"""
Electric's Postgres side, in the order data flows through it.

* `protocol`  -- the wire formats, sans-IO, shared by both directions: the
  frontend/backend protocol, pgoutput, type OIDs, LSNs, SCRAM/md5 auth.
* `source`    -- Postgres in: one connector per database (setup in that
  database, the replication client, pgoutput -> hub transactions).
* `publisher` -- Postgres out: the port-5433 service every database
  subscribes to (walsender sessions, catalog answers, hub -> pgoutput).
* `sql`       -- the ordinary txpostgres session used by setup and migrations.
* `tls`       -- TLS to Postgres with libpq's rules (sslmode & co.), for the
  replication stream; the libpq sessions get the same parameters.
"""
