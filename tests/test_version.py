import tomllib
from pathlib import Path

import mosic
from mosic.version import __version__


def test_the_version_is_pyprojects():
    pyproject = tomllib.loads((Path(mosic.__file__).parents[1] / "pyproject.toml").read_text())
    assert __version__ == mosic.__version__ == pyproject["project"]["version"]
