"""Everything that talks to Redis or SQLite: the intent stream, the lease, the breaker's
stored state, metrics, the confirmation queue and feed, and the ledger store with all its SQL."""
