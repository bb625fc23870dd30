"""
Migrations: SQL files applied through Electric to every database.

`migration` (a migration's file, name and hash; applying it to one
database), `migrator` (the Migrator service: applies a migration to
connectors, refreshes their replication, tells Satellite clients) and `cli`
(``electric apply-migration``).  The HTTP routes are in
`electric.http.migrations`.
"""
