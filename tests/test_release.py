"""Release checks: one version, and a wheel and sdist that work outside the checkout.

The version lives only in `torchsmith.__version__`: the package metadata reads it,
`torchsmith --version` prints it, and `CHANGELOG.md` names it as the newest release.

The slow test builds the wheel and the sdist with `python -m build --no-isolation`
(this machine may be offline, so the build uses the installed setuptools instead of
downloading one), checks that the embedded MNIST sample is inside both, installs the
wheel into a fresh virtual environment and trains there on that sample. The wheel is
installed with `--no-deps --no-index`; its dependencies (torch, torchvision, ...) come
from the running interpreter's site-packages, which a `.pth` file in the new
environment appends to its path after the environment's own site-packages. So what is
imported as `torchsmith` is the wheel's copy, never the checkout, which the test asserts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import torchsmith
from torchsmith.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = "torchsmith/data/samples/mnist_sample.npz"
VERSION = torchsmith.__version__


def test_version_command_prints_the_package_version() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert out.getvalue().strip() == f"torchsmith {VERSION}"


def test_version_is_written_in_one_place() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert 'version = { attr = "torchsmith._version.__version__" }' in pyproject
    project_table = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert not re.search(r"^version\s*=", project_table, re.M), "a second, static version in pyproject.toml"
    elsewhere = [
        str(p.relative_to(REPO))
        for p in (REPO / "src").rglob("*.py")
        if p.name != "_version.py" and f'"{VERSION}"' in p.read_text(encoding="utf-8")
    ]
    assert not elsewhere, f"the version is written out again in {elsewhere}; import torchsmith.__version__"


def test_changelog_names_the_current_version_first() -> None:
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2}|Unreleased)$", changelog, re.M)
    assert releases, "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' heading (Keep a Changelog)"
    assert releases[0][0] == VERSION, f"newest CHANGELOG entry is {releases[0][0]}, the package is {VERSION}"
    newest = changelog.split(f"## [{VERSION}]", 1)[1].split("\n## [", 1)[0]
    assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", newest, re.M)


def copy_checkout(destination: Path) -> Path:
    """The checkout without build outputs, so building never writes into the working tree."""
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        ".ci-venv",
        "runs",
        "build",
        "dist",
        "site",
        "*.egg-info",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    )
    shutil.copytree(REPO, destination, ignore=ignore)
    return destination


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, **extra}


@pytest.mark.slow
def test_wheel_installs_and_trains_outside_the_checkout(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="the 'build' package is not installed (pip install build)")
    source = copy_checkout(tmp_path / "source")
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    wheel = dist / f"torchsmith-{VERSION}-py3-none-any.whl"
    sdist = dist / f"torchsmith-{VERSION}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"torchsmith-{VERSION}.dist-info/entry_points.txt").decode()
    assert SAMPLE in names and "torchsmith/cli.py" in names
    assert "torchsmith = torchsmith.cli.main:run" in entry_points
    with tarfile.open(sdist) as archive:
        assert f"torchsmith-{VERSION}/src/{SAMPLE}" in archive.getnames()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        ).stdout.strip()
    )
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (venv_site / "dependencies_from_the_test_interpreter.pth").write_text("\n".join(sorted(here)) + "\n")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]

    work = tmp_path / "work"  # outside the checkout, so nothing can be imported from it by accident
    work.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import torchsmith; print(torchsmith.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        env=clean_env(),
        check=True,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(venv.resolve()), where.stdout

    command = venv / ("Scripts/torchsmith.exe" if os.name == "nt" else "bin/torchsmith")
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=clean_env(), cwd=work)
    assert version.stdout.strip() == f"torchsmith {VERSION}"
    trained = subprocess.run(
        [str(command), "train", "--max-steps", "20", "--quiet", "--run-dir", "run"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(TORCHSMITH_CACHE=str(tmp_path / "cache")),
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 20
    assert summary["data"] == "mnist-sample" and summary["versions"]["torchsmith"] == VERSION
    assert 0.5 < summary["test"]["accuracy"] <= 1.0  # real digits: 20 steps reach about 0.77
    assert trained.stdout.strip().splitlines()[-1].startswith(f"test accuracy {summary['test']['accuracy']:.4f}")
