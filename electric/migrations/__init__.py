"""
Migrations: SQL files applied through Electric to every database.

`migration` (a migration's file, name and hash; applying it to one
database) and `cli` (``electric apply-migration``).
"""
