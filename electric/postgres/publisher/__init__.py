"""
Postgres out: the publisher on POSTGRES_REPLICATION_PORT (5433).

Every database's subscription connects here as to a logical walsender.
`service` (PublisherService: listener, slots, hub -> socket pumping),
`session` (one connection as a sans-IO state machine), `catalog_answers`
(the fixed queries a subscriber asks), `outbound` (resolved hub
transactions -> pgoutput) and `credentials` (who may subscribe).
"""
