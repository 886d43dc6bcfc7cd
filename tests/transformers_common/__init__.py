"""Transformers' shared model test suites (`ModelTesterMixin`, `ConfigTester`, `ProcessorTesterMixin`, ...),
taken from the source archive of the installed Transformers release.

The wheel ships no tests. `make common-tests` (a prerequisite of `make test`) runs `fetch_common_tests.py`, which
downloads the release's source archive from PyPI once and keeps its `tests/` folder in `.cache/transformers-<version>/`
(ignored by git). `load_common_tests()` imports that folder as the package `transformers_tests`, a name distinct
from our own `tests/` (a plain folder, not a package), so the archive's relative imports
(`from .generation.test_utils import ...`) resolve. Four small modules those imports need are not in the archive;
`stand_ins.py` provides our own minimal versions.

Usage in a test module (ours: `tests/test_transformers_common.py`)::

    from transformers_common import load_common_tests

    common = load_common_tests()  # skips the module when the archive is absent (plain `pytest`), see below
    ModelTesterMixin = common.module("test_modeling_common").ModelTesterMixin
    ProcessorTesterMixin = common.module("test_processing_common").ProcessorTesterMixin

Without the cached archive, `load_common_tests()` skips the calling test module with the command that fetches it;
under `make test` (which sets `SEPS_REQUIRE_COMMON_TESTS=1`) it raises instead, so CI cannot skip the suite silently.
"""

import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import transformers

from . import stand_ins

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = REPOSITORY_ROOT / ".cache"
PACKAGE_NAME = "transformers_tests"
REQUIRE_VARIABLE = "SEPS_REQUIRE_COMMON_TESTS"
FETCH_COMMAND = "make common-tests"

# The modules the archive's test suites import that the archive lacks, each served by `stand_ins`.
_STAND_IN_MODULES = (
    f"{PACKAGE_NAME}.generation.test_utils",  # GenerationTesterMixin
    f"{PACKAGE_NAME}.utils.test_configuration_utils",  # config_common_kwargs
    f"{PACKAGE_NAME}.exporters.test_export",  # ExportTesterMixin
    "fetch_hub_objects_for_ci",  # url_to_local_path (the archive imports it from its repository's utils/ folder)
)


def common_tests_dir(version: str = transformers.__version__) -> Path:
    """Where `fetch_common_tests.py` keeps the `tests/` folder of Transformers `version`'s source archive."""
    return CACHE_ROOT / f"transformers-{version}" / "tests"


@dataclass(frozen=True)
class CommonTests:
    """The imported `tests/` package of one Transformers release."""

    version: str
    folder: Path

    def module(self, name: str) -> types.ModuleType:
        """A module of the archive's `tests/` folder, e.g. `"test_modeling_common"`."""
        return importlib.import_module(f"{PACKAGE_NAME}.{name}")


def load_common_tests() -> CommonTests:
    """Register the installed release's cached `tests/` folder as the package `transformers_tests` (once)."""
    version = transformers.__version__
    folder = common_tests_dir(version)
    if not folder.is_dir():
        _skip_or_fail(
            f"Transformers {version}'s common test suites are not in {folder}: run `{FETCH_COMMAND}` (it downloads "
            "the release's source archive from PyPI)"
        )
    if importlib.util.find_spec("parameterized") is None:
        _skip_or_fail("the common test suites need the package `parameterized`: pip install -e '.[test]'")
    package = sys.modules.get(PACKAGE_NAME)
    if package is None:
        package = types.ModuleType(PACKAGE_NAME)
        package.__path__ = [str(folder)]
        sys.modules[PACKAGE_NAME] = package
        for name in _STAND_IN_MODULES:
            _register_stand_in(name)
    elif list(package.__path__) != [str(folder)]:
        raise ImportError(f"{PACKAGE_NAME} is already imported from {list(package.__path__)}, not {folder}")
    return CommonTests(version, folder)


def _skip_or_fail(message: str) -> None:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


def _register_stand_in(name: str) -> None:
    """`stand_ins` under `name`, with empty parent packages, so that `from .generation.test_utils import ...` finds
    it."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        parent = ".".join(parts[:depth])
        if parent not in sys.modules:
            sys.modules[parent] = types.ModuleType(parent)
            sys.modules[parent].__path__ = []
    sys.modules[name] = stand_ins
