"""The cache: options, the public ``Cache`` / ``SyncCache`` API, tier, events, statistics."""
