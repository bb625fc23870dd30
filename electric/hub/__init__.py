"""
The hub: every write meets here (see `electric.hub.interface` for the contract).

* `interface`  -- IHub / ISubscription and the shared data model.
* `changes`    -- producers' rows -> per-key RowChanges.
* `resolution` -- the conflict rule (pure, deterministic).
* `embedded`   -- EmbeddedHub, the default IHub over one SQLite file.
* `positions`  -- hub positions as Postgres LSNs and Satellite client LSNs.
* `offsets`    -- OffsetStore, the OFFSET_STORAGE_FILE map.
"""
