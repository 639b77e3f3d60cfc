"""Bad input is refused as such: a token with non-ASCII parts is a token error (it was a
TypeError, an HTTP 500), and a ledger path holding ``#`` opens that file read-only (it
opened, and created, the file named by the part before the ``#``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.adapters import subscriber_tokens as tokens
from workers.adapters.ledger_store import Store, connect

SECRET = b"s" * 32


@pytest.mark.parametrize("token", [
    "v1.1.1.\u00e9",  # a non-ASCII signature
    "v1.\u00b2.99999999999999.abc",  # a superscript digit: isdigit() yes, int() no
    "v1.1.\u0661\u0662.abc",  # Arabic-Indic digits
    "v1.1.1." + "\udcff",  # a lone surrogate, as a bad %-escape may decode
])
def test_a_token_with_non_ascii_parts_is_refused_as_malformed(token: str) -> None:
    with pytest.raises(tokens.TokenError, match="malformed"):
        tokens.verify(SECRET, token)


def test_a_good_token_still_verifies() -> None:
    assert tokens.verify(SECRET, tokens.issue(SECRET, 42, 60)) == 42


def test_a_ledger_path_with_a_hash_opens_that_file_read_only(tmp_path: Path) -> None:
    path = tmp_path / "copy#1.sqlite3"
    store = Store(path, 1_000)
    store.close()
    conn = connect(path, 1_000, readonly=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM outcomes").fetchone() == (0,)
    finally:
        conn.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))
                  ) == ["copy#1.sqlite3"], "no other file was created"
