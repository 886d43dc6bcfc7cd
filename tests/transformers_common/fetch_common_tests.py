"""Download the installed Transformers release's source archive from PyPI and keep its `tests/` folder in
`.cache/transformers-<version>/tests` (see `tests/transformers_common/__init__.py`). Idempotent: does nothing when
the folder is there. `make common-tests` runs it.

    python tests/transformers_common/fetch_common_tests.py
"""

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from transformers_common import CACHE_ROOT, common_tests_dir  # noqa: E402


def fetch(version: str) -> Path:
    """The cached `tests/` folder of Transformers `version`, downloaded first if absent. Raises `RuntimeError`
    naming the version and pip's message when the download fails; nothing is left half-extracted."""
    target = common_tests_dir(version)
    if target.is_dir():  # only ever created complete (one rename, below)
        return target
    CACHE_ROOT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_ROOT, prefix="download-") as scratch:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"transformers=={version}",
            "--dest",
            scratch,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(scratch).glob(f"transformers-{version}.tar.gz"))
        if result.returncode != 0 or not archives:
            raise RuntimeError(
                f"could not download the source archive of transformers=={version} from PyPI ({' '.join(command)} "
                f"exited with {result.returncode}): {' / '.join(result.stderr.strip().splitlines()[-2:])[-500:]}"
            )
        prefix = f"transformers-{version}/tests/"
        with tarfile.open(archives[0]) as archive:
            members = [member for member in archive.getmembers() if member.name.startswith(prefix)]
            if not any(member.name == prefix + "test_modeling_common.py" for member in members):
                raise RuntimeError(f"{archives[0].name} has no {prefix}test_modeling_common.py")
            archive.extractall(scratch, members=members, filter="data")
        # The repository's tests/__init__.py (empty), which the archive leaves out: `test_configuration_common.py`
        # loads it at import (`direct_transformers_import(Path(__file__).parent)`).
        (Path(scratch) / prefix / "__init__.py").touch()
        target.parent.mkdir(parents=True, exist_ok=True)
        # One rename: the folder appears complete or not at all.
        shutil.move(str(Path(scratch) / prefix), str(target))
    return target


if __name__ == "__main__":
    try:
        print(f"Transformers {transformers.__version__} common tests: {fetch(transformers.__version__)}")
    except RuntimeError as error:
        sys.exit(f"fetch_common_tests.py: {error}")
