"""Generate sdk/v1 from protos/shoal/v1, or with --check fail when the committed code drifted.

The .proto files are the public, readable definitions (packed numeric arrays, JSON text). Python reads
the same messages through a view in which every `repeated float`, `repeated fixed64` and `repeated fixed32`
field, and every field marked `// python: bytes`, is `bytes`: the same bytes on the wire, decoded by
numpy without a copy. The Python modules are generated from that view; the public definitions go into
sdk/v1/public.binpb (a descriptor set), which server reflection serves so grpcurl and other languages see
plain numbers and text.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.rpc import status_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "sdk" / "v1"
PUBLIC_SET = "public.binpb"
# google/rpc/*.proto (the rich error status) ship with googleapis-common-protos, beside their modules.
GOOGLEAPIS = Path(status_pb2.__file__).parent.parent.parent
INCLUDE = Path(protoc.__file__).parent / "_proto"

_PACKED = re.compile(r"^(\s*)repeated (?:float|fixed64|fixed32) (\w+ = \d+;.*)$")
_MARKED = re.compile(r"^(\s*)(repeated )?string (\w+ = \d+;.*// python: bytes.*)$")


def python_view(text: str) -> str:
    """A .proto's Python view: packed arrays and fields marked `python: bytes` become `bytes`."""
    out = []
    for line in text.splitlines():
        line = _PACKED.sub(r"\1bytes \2", line)
        line = _MARKED.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}bytes {m.group(3)}", line)
        out.append(line)
    return "\n".join(out) + "\n"


def _protoc(*args: str) -> None:
    if protoc.main(["protoc", f"-I{INCLUDE}", f"-I{GOOGLEAPIS}", *args]) != 0:
        raise SystemExit("protoc failed")


def generate(out: Path) -> list[Path]:
    """Write the Python modules (from the view) and the public descriptor set into `out`; return the files."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "shoal" / "v1").glob("*.proto"))
    view = out / "view"
    for name in sources:
        (view / name).parent.mkdir(parents=True, exist_ok=True)
        (view / name).write_text(python_view((PROTOS / name).read_text()))
    py = out / "py"
    py.mkdir()
    _protoc(f"-I{view}", f"--python_out={py}", f"--pyi_out={py}", f"--grpc_python_out={py}", *sources)
    files = sorted((py / "shoal" / "v1").iterdir())
    public = out / PUBLIC_SET
    _protoc(f"-I{PROTOS}", f"--descriptor_set_out={public}", "--include_imports", "--include_source_info", *sources)
    return [*files, public]


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
