"""The committed generated code matches the .proto files."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_proto_package_matches_folder() -> None:
    for proto in (ROOT / "protos" / "shoal" / "v1").glob("*.proto"):
        assert "package shoal.v1;" in proto.read_text(), proto
