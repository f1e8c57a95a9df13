"""Durability: snapshots, the SQLite replica store and the cache's persistence batches."""
