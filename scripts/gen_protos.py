"""Generate sdk/v1 from protos/shoal/v1, or with --check fail when the committed code drifted."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "sdk" / "v1"


def generate(out: Path) -> list[Path]:
    """Run protoc over every .proto into `out`; return the generated files."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "shoal" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # google/rpc/*.proto (the rich error status) ship with googleapis-common-protos, beside their modules.
    googleapis = Path(status_pb2.__file__).parent.parent.parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"-I{googleapis}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "shoal" / "v1").iterdir())


def main() -> int:
    """Write (or with --check, compare) the generated modules."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
        if check:
            drifted = [
                f.name
                for f in files
                if not (TARGET / f.name).exists() or not filecmp.cmp(f, TARGET / f.name, shallow=False)
            ]
            if drifted:
                print(f"generated code drifted from protos/: {drifted}; run scripts/gen_protos.py", file=sys.stderr)
                return 1
            return 0
        for f in files:
            shutil.copyfile(f, TARGET / f.name)
    (TARGET / "__init__.py").write_text('"""Generated gRPC modules for shoal.v1 (scripts/gen_protos.py)."""\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
