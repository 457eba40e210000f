"""The README is the user's manual: every setting the server reads is documented there, and every test it
cites as evidence exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hark.config import Settings

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


# `tests/<path>.py::<test function>`, as the README cites the test behind a claim.
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _test_functions(path: Path) -> set[str]:
    """The test functions a pytest file defines at its top level (sync or async), read without importing it."""
    tree = ast.parse(path.read_text(), str(path))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_test_the_readme_names_exists() -> None:
    references = TEST_REFERENCE.findall(README.read_text())
    assert references, "the README cites no test: the reliability table is gone or its format changed"
    repo = README.parent
    missing = [
        f"{path}::{name}"
        for path, name in references
        if not name.startswith("test_") or not (repo / path).is_file() or name not in _test_functions(repo / path)
    ]
    assert not missing, f"README.md names tests that do not exist: {missing}"


def test_every_row_of_the_reliability_table_is_backed_by_a_test_or_says_it_is_not() -> None:
    text = README.read_text()
    start = text.index("## Reliability and security")
    end = text.index("\n## ", start + 1)
    rows = [line for line in text[start:end].splitlines() if line.startswith("| ")]
    claims = [row for row in rows[2:] if not row.startswith("| **")]  # past the header; group rows name none
    assert claims, "the reliability table has no rows"
    unbacked = [row for row in claims if not TEST_REFERENCE.search(row) and "not covered" not in row]
    assert not unbacked, f"rows of the reliability table without a test: {unbacked}"
