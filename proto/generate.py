"""Generate the Python stubs into ``service/``: ``hark/v1`` (the Hark API, package ``hark.v1``) and ``hark/oip``
(the Open Inference Protocol, proto package ``inference``, Python package ``hark.oip``).

Run by ``make proto``; the test suite runs it into a temporary folder and compares, so committed
stubs can never drift from ``proto/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
DEFAULT_OUT = REPO_ROOT / "service"
PROTOS = ["hark/v1/hark.proto", "hark/oip/inference.proto"]
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


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
    # The proto package hark.v1 is the Python package hark.v1 under service/: protoc's imports stand as written.
    written = [out_dir / Path(p).parent / (Path(p).stem + suffix) for p in PROTOS for suffix in SUFFIXES]
    for path in written:
        (path.parent / "__init__.py").touch()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: service)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
