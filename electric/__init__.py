"""Electric: active-active replication between Postgres databases and Satellite clients."""

__version__ = "0.1.0"
