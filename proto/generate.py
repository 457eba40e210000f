"""Generate the Python stubs for the Hark API into ``service/api/``.

Run by ``make proto``; the test suite runs it into a temporary folder and compares, so committed
stubs can never drift from ``proto/``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "service" / "api"
PROTOS = ["hark/v1/hark.proto"]


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every proto and return the files written."""
    from grpc_tools import protoc  # a dev dependency: only this script needs it

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(PROTO_ROOT / p) for p in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = sorted(p for p in out_dir.rglob("*") if p.suffix in {".py", ".pyi"} and p.name != "__init__.py")
    for path in written:
        _make_imports_package_relative(path)
    for package in (out_dir, out_dir / "hark", out_dir / "hark" / "v1"):
        (package / "__init__.py").touch()
    return written


def _make_imports_package_relative(path: Path) -> None:
    """protoc writes ``from hark.v1 import x``; the stubs live in ``service.api``."""
    text = path.read_text()
    text = re.sub(r"^from hark\.v1 import", "from service.api.hark.v1 import", text, flags=re.M)
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: service/api)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
