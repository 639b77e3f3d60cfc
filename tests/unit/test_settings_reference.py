"""docs/settings.md is generated from the settings' field descriptions: a field added,
renamed or re-described without regenerating it fails here."""

from __future__ import annotations

from pathlib import Path

from workers.settings import Settings, settings_reference

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_says_what_it_is_for() -> None:
    assert [name for name, f in Settings.model_fields.items() if not f.description] == []


def test_the_settings_reference_is_current() -> None:
    assert REFERENCE.read_text() == settings_reference(), (
        "docs/settings.md is stale: betstream settings > docs/settings.md")
