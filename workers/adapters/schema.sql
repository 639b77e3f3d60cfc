-- betstream ledger schema, version 7 (2: bets keyed by seq; 3: archival; 4: no bets_by_market;
-- 5: user_entries instead of the ledger_by_user index; 6: markets; 7: holds). Table names follow
-- the seed audit.
-- Anyone can check the invariants with the sqlite3 CLI (see docs/ledger.md).

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- Balance is a cached snapshot of SUM(transaction_ledger.amount) for the account.
-- System accounts have ids <= 0: 0 cash (outside world), -1 house, -2 escrow, -3 pending
-- withdrawals (held).
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    balance    INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    CHECK (id <= 0 OR balance >= 0)
);

-- Archival: batches 1..through_batch live in archive files (archive_files), and the live
-- ledger keeps one carried-forward row per account (ref_type 'carry', entry_id < 0) worth
-- the sum of that account's archived rows. The live hash chain continues from head_hash.
CREATE TABLE IF NOT EXISTS archive_anchor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    through_batch INTEGER NOT NULL,
    head_hash     TEXT    NOT NULL,
    seq_max       INTEGER NOT NULL,
    entry_id_max  INTEGER NOT NULL,
    cutoff_ms     INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_files (
    file          TEXT    PRIMARY KEY,
    first_batch   INTEGER NOT NULL,
    through_batch INTEGER NOT NULL
);

-- Append-only double-entry ledger: the rows of one txn_id sum to zero.
CREATE TABLE IF NOT EXISTS transaction_ledger (
    entry_id   INTEGER PRIMARY KEY,
    txn_id     TEXT    NOT NULL,
    batch_no   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount != 0),
    ref_type   TEXT    NOT NULL,
    ref_id     TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
-- No index by user on the live ledger: a B-tree keyed by account takes each posting on a
-- random page, and every batch rewrote one page per account it touched (half of a commit at
-- a million intents, growing with the ledger). Statements find an account's entries in
-- user_entries instead (below). Archive files, written once, keep the index
-- (ledger_by_user, workers/adapters/ledger_archive.py).
-- No index on ref_id: random UUID keys cost a page write per row; the audit joins without it.

CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON transaction_ledger
BEGIN SELECT RAISE(ABORT, 'transaction_ledger is append-only'); END;
-- Rows leave only by archival: a batch may be deleted once the archive anchor covers it,
-- i.e. once its rows are durable in an archive file (see workers/adapters/ledger_archive.py).
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON transaction_ledger
WHEN OLD.batch_no > COALESCE((SELECT through_batch FROM archive_anchor), 0)
BEGIN SELECT RAISE(ABORT, 'transaction_ledger is append-only'); END;

-- Keyed by the seq of the outcome that placed the bet: inserts append, no random B-tree.
-- The bet id (= the intent id) is found through outcomes_by_id and is unique there.
CREATE TABLE IF NOT EXISTS bets (
    seq         INTEGER PRIMARY KEY,
    id          TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    market      TEXT    NOT NULL,
    selection   TEXT    NOT NULL,
    odds        TEXT    NOT NULL,
    stake       INTEGER NOT NULL CHECK (stake > 0),
    status      TEXT    NOT NULL CHECK (status IN ('open', 'won', 'lost', 'void')),
    settled_seq INTEGER
);
-- No index on (market, status): nothing reads bets by market, and keeping it cost ~15 % of
-- the commit (docs/ledger.md says how to add one for ad-hoc queries).
-- Archival finds the bets settled before its cutoff (appends: settled_seq only grows).
CREATE INDEX IF NOT EXISTS bets_by_settled ON bets(settled_seq) WHERE settled_seq IS NOT NULL;

-- Markets that are not simply open (contract v1.1): suspended (bets rejected
-- market_suspended until resumed), settling (a settle_market committed: its open bets are
-- being settled in chunks, settlement holds its id and results, settled_through the last bet
-- seq done) or closed (resulted: market_closed for good). updated_seq is the outcome that
-- set the state. A market never named here is open.
CREATE TABLE IF NOT EXISTS markets (
    market          TEXT    PRIMARY KEY,
    state           TEXT    NOT NULL
                    CHECK (state IN ('open', 'suspended', 'settling', 'closed')),
    updated_seq     INTEGER NOT NULL,
    settlement      TEXT,
    settled_through INTEGER
) WITHOUT ROWID;

-- Withdrawal holds (contract v1.1): the amount sits in the pending account (-3) while the
-- hold is open; posted (-> cash), voided (-> the player) or expired (voided by the writer
-- at expires_at, ms). seq is the outcome that opened it, closed_seq the one that closed it.
CREATE TABLE IF NOT EXISTS holds (
    id          TEXT    PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    state       TEXT    NOT NULL CHECK (state IN ('open', 'posted', 'voided', 'expired')),
    expires_at  INTEGER,
    seq         INTEGER NOT NULL,
    closed_seq  INTEGER
) WITHOUT ROWID;
-- The writer finds the holds due: open ones with a time, soonest first.
CREATE INDEX IF NOT EXISTS holds_due ON holds(expires_at)
    WHERE state = 'open' AND expires_at IS NOT NULL;

-- One row per outcome; seq is the monotonic confirmation sequence number.
-- entry_id (the stream entry) is unique: a redelivered entry never gets a second outcome.
CREATE TABLE IF NOT EXISTS outcomes (
    seq          INTEGER PRIMARY KEY,
    id           TEXT    NOT NULL,
    entry_id     TEXT    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL,
    user_id      INTEGER NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason       TEXT,
    detail       TEXT,
    balance      INTEGER,
    body_sha     BLOB    NOT NULL,
    batch_no     INTEGER NOT NULL,
    committed_at INTEGER NOT NULL
);
-- An intent id has one first outcome; later entries with the same id but another body
-- are recorded as id_conflict rows without taking the id over.
CREATE UNIQUE INDEX IF NOT EXISTS outcomes_by_id ON outcomes(id)
    WHERE reason IS NULL OR reason != 'id_conflict';

-- Each user's ledger entries, for statements: (user_id, entry_id) of every live row of a
-- user account (id >= 1) with 0 < entry_id <= meta 'user_entries_through' (rows above it
-- may be listed too, by a round in progress). The writer's lister adds them beside the
-- writer, many batches at a time, sorted, in short transactions of a slice of rows each
-- (workers/adapters/ledger_listing.py), so each page of this table is written once per round; a statement
-- reads the listing up to the mark and the ledger's tail past it. Carried-forward rows
-- (entry_id < 0) are found by their fixed ids; a system account's rows (id <= 0, the other
-- side of about every posting) by a scan. Derived data: the audit checks it.
CREATE TABLE IF NOT EXISTS user_entries (
    user_id  INTEGER NOT NULL,
    entry_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, entry_id)
) WITHOUT ROWID;

-- Tamper evidence: each batch hashes its ledger rows, chained to the previous batch.
CREATE TABLE IF NOT EXISTS batches (
    batch_no     INTEGER PRIMARY KEY,
    epoch        INTEGER NOT NULL,
    rows         INTEGER NOT NULL,
    prev_hash    TEXT    NOT NULL,
    hash         TEXT    NOT NULL,
    committed_at INTEGER NOT NULL
);

INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', 7), ('epoch', 0),
    ('user_entries_through', 0);
INSERT OR IGNORE INTO users(id, balance, created_at) VALUES (0, 0, 0), (-1, 0, 0), (-2, 0, 0),
    (-3, 0, 0);
