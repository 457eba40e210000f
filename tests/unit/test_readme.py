"""The README is the user's manual: every setting the server reads is documented there."""

from __future__ import annotations

from pathlib import Path

from service.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _settings_section() -> str:
    text = README.read_text()
    start, end = text.index("<!-- settings-table -->"), text.index("<!-- /settings-table -->")
    return text[start:end]


def test_every_setting_is_in_the_readme_settings_table() -> None:
    section = _settings_section()
    missing = [name for name in Settings.model_fields if f"`HARK_{name.upper()}`" not in section]
    assert not missing, f"document these settings in README.md: {missing}"


def test_the_readme_documents_no_setting_that_does_not_exist() -> None:
    known = {f"HARK_{name.upper()}" for name in Settings.model_fields} | {"HARK_CONFIG_FILE"}
    documented = {part.strip("`") for line in _settings_section().splitlines() for part in line.split("|")[1:2]}
    stale = {d for d in documented if d.startswith("HARK_")} - known
    assert not stale, f"README documents settings that no longer exist: {sorted(stale)}"
