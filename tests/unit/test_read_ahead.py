"""When the writer overlaps a batch's commit with reading and admitting the next one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from workers.settings import load_settings
from workers.writer.batch_source import reads_ahead


def test_a_stream_fed_near_the_commit_rate_overlaps_without_a_full_batch() -> None:
    """At 30,000/s a batch of 8,000 is seldom waiting in full; 5,000 waiting is a backlog."""
    s = load_settings(batch_size_max=8_000, read_ahead_size_min=1_000)
    assert reads_ahead(5_000, s)
    assert reads_ahead(1_000, s)


def test_light_load_does_not_split_into_more_batches() -> None:
    s = load_settings(batch_size_max=8_000, read_ahead_size_min=1_000)
    assert not reads_ahead(999, s)
    assert not reads_ahead(1, s)


def test_a_full_batch_always_overlaps_even_when_smaller_than_the_minimum() -> None:
    s = load_settings(batch_size_max=4, read_ahead_size_min=1_000)
    assert reads_ahead(4, s)
    assert not reads_ahead(3, s)


@given(n=st.integers(0, 20_000), size_max=st.integers(1, 10_000),
       size_min=st.integers(1, 10_000), overlap=st.booleans())
def test_overlap_needs_the_switch_and_a_backlog(n: int, size_max: int, size_min: int,
                                                 overlap: bool) -> None:
    s = load_settings(batch_size_max=size_max, read_ahead_size_min=size_min,
                      commit_overlap=overlap)
    assert reads_ahead(n, s) == (overlap and (n >= size_max or n >= size_min))
