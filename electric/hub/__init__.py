"""
The hub: every write meets here (see `electric.hub.interface` for the contract).

* `interface`  -- IHub, IAppendBuffer, ISubscription, ISnapshotReader and the shared data model.
* `changes`    -- producers' rows -> per-key RowChanges.
* `resolution` -- the conflict rule (pure, deterministic).
* `store`      -- the SQLite store: chunked log, row states, chunked readers (no threads, no order).
* `spill`      -- staging files for transactions handed over in chunks.
* `embedded`   -- EmbeddedHub, the default IHub: arrival-order sequencer over the store.
* `positions`  -- hub positions as Postgres LSNs and Satellite client LSNs.
* `offsets`    -- OffsetStore, the OFFSET_STORAGE_FILE map.
"""
