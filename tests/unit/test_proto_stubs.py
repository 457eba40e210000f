"""The committed stubs in service/hark/v1 and service/hark/oip are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _generator():  # proto/ is not a package: load the script by path
    spec = importlib.util.spec_from_file_location("generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert written, "protoc wrote nothing"
    committed = REPO / "service"
    stale = [
        str(p.relative_to(tmp_path))
        for p in written
        if (committed / p.relative_to(tmp_path)).read_text() != p.read_text()
    ]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit service/hark/v1 and service/hark/oip"
