"""The README's settings table is generated from the settings' field descriptions: a field
added, renamed or re-described without regenerating it fails here."""

from __future__ import annotations

from pathlib import Path

from workers.settings import SETTINGS_TABLE_END, SETTINGS_TABLE_START, Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_says_what_it_is_for() -> None:
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []


def test_the_readme_carries_the_current_settings_table() -> None:
    text = README.read_text()
    start = text.index(SETTINGS_TABLE_START)
    end = text.index(SETTINGS_TABLE_END) + len(SETTINGS_TABLE_END) + 1
    assert text[start:end] == settings_table(), (
        "README's settings table is stale: replace it with the output of `betstream settings`")
