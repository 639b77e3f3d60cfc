"""The writer process: one leader at a time reads batches from the stream, decides them
(core), commits each in one SQLite transaction and then acknowledges and confirms it."""
