"""The pure rules: what the writer decides, how batches and hashes are built, the breaker's
transitions, archival and reconciliation. No I/O, no clock: every input is an argument,
every result a new value (import-linter's "core-pure" contract in pyproject.toml)."""
