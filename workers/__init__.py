"""betstream workers: the writer, audit and operator CLI around the SQLite ledger."""
