import platform

import pytest

from transformers_seps.train.allocator import reuse_freed_cpu_memory


def test_allocator_settings_apply_on_glibc_and_refuse_bad_values():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_cpu_memory() is on_glibc
    with pytest.raises(ValueError, match="mmap_threshold"):
        reuse_freed_cpu_memory(mmap_threshold=2**40)  # would overflow mallopt's C int
    with pytest.raises(ValueError, match="trim_threshold"):
        reuse_freed_cpu_memory(trim_threshold=0)
