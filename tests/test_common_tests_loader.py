"""The loader of Transformers' common test suites (tests/transformers_common): clear messages when the cached
suites are missing, and a failed download that names the version and leaves nothing behind."""

import subprocess

import pytest
import transformers_common
from transformers_common import fetch_common_tests


def test_missing_suites_skip_under_plain_pytest_and_fail_under_make_test(tmp_path, monkeypatch):
    monkeypatch.setattr(transformers_common, "CACHE_ROOT", tmp_path)
    monkeypatch.delenv(transformers_common.REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="make common-tests"):
        transformers_common.load_common_tests()
    monkeypatch.setenv(transformers_common.REQUIRE_VARIABLE, "1")
    with pytest.raises(RuntimeError, match=r"common test suites are not in .*transformers-[\d.]+/tests: run `make"):
        transformers_common.load_common_tests()


def test_a_failed_download_names_the_version_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(transformers_common, "CACHE_ROOT", tmp_path)
    monkeypatch.setattr(fetch_common_tests, "CACHE_ROOT", tmp_path)

    def failing_pip(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for transformers")

    monkeypatch.setattr(fetch_common_tests.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match=r"transformers==9\.9\.9 .*No matching distribution"):
        fetch_common_tests.fetch("9.9.9")
    assert list(tmp_path.iterdir()) == []
