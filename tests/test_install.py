"""How Shoal installs: a folder named `shoal` beside the clone never shadows the installed package."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPORT = "import shoal; print(shoal.Client.__name__, shoal.__file__)"


def _a_clone_named_shoal(parent: Path) -> Path:
    # Python run from the parent of a clone named `shoal` sees that folder as a namespace package.
    clone = parent / "shoal"
    (clone / "sdk").mkdir(parents=True)
    (clone / "README.md").write_text("a clone\n")
    return clone


def test_a_folder_named_shoal_does_not_shadow_the_package(tmp_path: Path) -> None:
    _a_clone_named_shoal(tmp_path)
    code = "import shoal; print(shoal.Client.__name__, shoal.__version__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split()[0] == "Client", out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "shoal", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("shoal "), out.stderr


def _sources(to: Path) -> Path:
    """A copy of what an install reads (pyproject, README, the package folders), so builds leave the tree alone."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}:
        shutil.copytree(ROOT / folder, to / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(ROOT / name, to / name)
    return to


def _venv(at: Path) -> Path:
    """A venv without Shoal that still sees this environment's packages (numpy, grpc, ...), after its own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(at)], check=True, timeout=120)
    python = at / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # A path line in a .pth file is appended to sys.path (the .pth files there are not run, so the editable
    # install of the environment running the tests stays out); `zz` sorts it after the install's own .pth.
    (Path(own) / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _editable_install(python: Path, source: Path, *settings: str) -> None:
    # Offline: this environment's setuptools builds it (no isolated build environment to download).
    cmd = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    cmd += ["--no-build-isolation", "-e", str(source), *settings]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow  # builds two editable installs into a new venv
def test_a_plain_editable_install_is_strict_and_not_shadowed(tmp_path: Path) -> None:
    source = _sources(tmp_path / "src")
    python = _venv(tmp_path / "venv")
    parent = tmp_path / "work"
    _a_clone_named_shoal(parent)

    _editable_install(python, source)  # the plain `pip install -e .`
    out = subprocess.run([str(python), "-c", IMPORT], cwd=parent, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split()[0] == "Client", out.stderr
    assert Path(out.stdout.split()[1]).is_relative_to(source / "build"), "the strict install's link tree"
    out = subprocess.run(
        [str(python), "-m", "shoal", "--version"], cwd=parent, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("shoal "), out.stderr

    # What setup.cfg's [editable_wheel] mode prevents: the lenient mode is shadowed by the folder.
    _editable_install(python, source, "--config-settings", "editable_mode=lenient")
    out = subprocess.run([str(python), "-c", IMPORT], cwd=parent, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "has no attribute 'Client'" in out.stderr, out.stdout + out.stderr
