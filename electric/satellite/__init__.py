"""
Satellite clients (SQLite apps) over protobuf-over-websocket on WEBSOCKET_PORT, path /ws.

`codec` (frames, both type tables, rows), `session` (sans-IO protocol state
machine), `auth` / `tokens` (insecure and JWT auth, ``electric gen-token``),
`transport` (autobahn on the reactor) and `service` (`SatelliteService`).
"""
