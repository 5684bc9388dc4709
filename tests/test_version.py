"""fedhn's version where fedhn is installed, and where it is not: a deployment's SuperExecs (the
Docker images) import it from the FAB that `flwr run` sends, without package metadata."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import fedhn

PROJECT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_version_is_the_one_in_pyproject():
    assert fedhn.__version__ == VERSION


def test_fedhn_imports_from_an_unpacked_app_without_package_metadata(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(PROJECT / "fedhn", app / "fedhn", ignore=shutil.ignore_patterns("__pycache__"))
    (app / "pyproject.toml").write_text(
        (PROJECT / "pyproject.toml").read_text().replace(f'version = "{VERSION}"', 'version = "9.8.7"')
    )
    # -S: no site-packages, hence no metadata of the installed fedhn; -I: not this checkout either.
    script = f"import sys; sys.path.insert(0, {str(app)!r}); import fedhn; print(fedhn.__version__, fedhn.__file__)"
    printed = subprocess.run([sys.executable, "-S", "-I", "-c", script], capture_output=True, text=True, check=True)
    version, module = printed.stdout.split()
    assert version == "9.8.7" and Path(module).is_relative_to(app)
