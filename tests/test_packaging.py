"""The distributions as users get them: build, twine check, and a fresh install Airflow sees.

The fresh virtualenv gets the wheel alone plus its declared dependencies, resolved by uv with
the versions of ``uv.lock`` as constraints (so the resolve is quick and mostly served from
uv's cache; PyPI is used for anything the cache lacks). Nothing from the checkout or the
development environment is visible to it.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

import airflow_provider_tes

REPO_ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINT = "airflow_provider_tes.get_provider_info:get_provider_info"
# What an sdist may hold: the package, its metadata files and what hatchling always adds.
SDIST_TOP_LEVEL = {
    "airflow_provider_tes",
    "README.md",
    "CHANGELOG.md",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",
}


def _uv() -> str:
    found = shutil.which("uv") or str(Path.home() / ".local" / "bin" / "uv")
    assert Path(found).exists(), "uv is needed to build and install the distributions (make uv)"
    return found


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the checkout, the dev venv or Airflow config."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    env = {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("AIRFLOW_", "AIRFLOW__"))
    }
    env.update(extra)
    return env


def _run(args: Sequence[str], *, timeout: float, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    # The sdist is built first and the wheel from it, so this also proves the sdist builds.
    _run([_uv(), "build", "--out-dir", str(out), str(REPO_ROOT)], timeout=300, cwd=out)
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return Dists(wheel=wheels[0], sdist=sdists[0])


def test_twine_check_passes(dists: Dists) -> None:
    out = _run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dists.wheel), str(dists.sdist)],
        timeout=120,
        cwd=dists.wheel.parent,
    )
    assert out.count("PASSED") == 2, out


def test_version_comes_from_the_package(dists: Dists) -> None:
    version = airflow_provider_tes.__version__
    assert dists.wheel.name.startswith(f"airflow_provider_tes-{version}-"), dists.wheel.name
    assert dists.sdist.name == f"airflow_provider_tes-{version}.tar.gz"
    with zipfile.ZipFile(dists.wheel) as whl:
        metadata = whl.read(f"airflow_provider_tes-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata
    # One place only: pyproject reads it from the package instead of repeating it.
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and f'"{version}"' not in pyproject


def test_wheel_contents(dists: Dists) -> None:
    version = airflow_provider_tes.__version__
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"airflow_provider_tes-{version}.dist-info/entry_points.txt").decode()
    assert "airflow_provider_tes/py.typed" in names
    assert {n.split("/")[0] for n in names} == {
        "airflow_provider_tes",
        f"airflow_provider_tes-{version}.dist-info",
    }, sorted(names)
    parser = configparser.ConfigParser()
    parser.read_string(entry_points)
    assert dict(parser["apache_airflow_provider"]) == {"provider_info": ENTRY_POINT}


def test_sdist_contents(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name]
    assert "airflow_provider_tes/py.typed" in names
    assert {"README.md", "CHANGELOG.md", "pyproject.toml"} <= set(names), sorted(names)
    # Nothing else from the checkout (tests, artifacts, node_modules) rides along.
    stray = sorted(n for n in names if n.split("/")[0] not in SDIST_TOP_LEVEL)
    assert not stray, stray


@pytest.mark.timeout(600)
def test_fresh_install_is_seen_by_airflow(dists: Dists, tmp_path: Path) -> None:
    uv = _uv()
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    # Same interpreter version as the development environment, but a venv of its own.
    _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], timeout=120, cwd=tmp_path)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()

    constraints = tmp_path / "constraints.txt"
    _run(
        [
            uv,
            "export",
            "--frozen",
            "--no-dev",
            "--no-emit-project",
            "--no-hashes",
            "--quiet",
            "--output-file",
            str(constraints),
        ],
        timeout=120,
        cwd=REPO_ROOT,
    )
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            "--constraint",
            str(constraints),
            str(dists.wheel),
            f"apache-airflow=={installed_version('apache-airflow')}",
        ],
        timeout=300,
        cwd=tmp_path,
    )
    location = _run(
        [str(python), "-c", "import airflow_provider_tes as p; print(p.__file__, p.__version__)"],
        timeout=60,
        cwd=tmp_path,
    ).split()
    assert location[0].startswith(str(venv)), location
    assert location[1] == airflow_provider_tes.__version__

    home = tmp_path / "airflow_home"
    home.mkdir()
    env = _clean_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    airflow = str(venv / "bin" / "airflow")

    providers = json.loads(
        _run([airflow, "providers", "list", "--output", "json"], timeout=180, cwd=home, env=env)
    )
    ours = [p for p in providers if p["package_name"] == "airflow-provider-tes"]
    assert ours, [p["package_name"] for p in providers]
    assert ours[0]["version"] == airflow_provider_tes.__version__

    hooks = json.loads(
        _run([airflow, "providers", "hooks", "--output", "json"], timeout=180, cwd=home, env=env)
    )
    tes = [h for h in hooks if h.get("connection_type") == "tes"]
    assert tes, hooks
    assert tes[0]["class"] == "airflow_provider_tes.hooks.tes.TesHook"
    assert tes[0]["package_name"] == "airflow-provider-tes"

    # The provider's own command, registered through its provider info's "cli" entry.
    cleanup_help = _run([airflow, "tes", "cleanup", "--help"], timeout=180, cwd=home, env=env)
    assert "--yes" in cleanup_help and "--older-than" in cleanup_help, cleanup_help
