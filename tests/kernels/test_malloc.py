"""axon_kernels.malloc: freed array memory is reused, not faulted in again; the user's choice wins."""

import os
import resource

import numpy as np
import pytest

from axon_kernels import malloc

GLIBC = os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc") if hasattr(os, "confstr") else False


@pytest.mark.skipif(not GLIBC, reason="the policy only acts on glibc's malloc")
@pytest.mark.skipif(any(v in os.environ for v in malloc._USER_VARIABLES + ("AXON_KEEP_FREED_MEMORY",)),
                    reason="the environment chose glibc's malloc settings itself")
def test_a_freed_block_is_reused_without_page_faults():
    assert malloc.keep_freed_memory()                    # importing axon_kernels applied it already
    n = (4 << 20) // 8                                   # 4 MB: above glibc's default mmap threshold
    a = np.ones(n)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = np.ones(n)                                       # touches all 1024 pages
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert b.sum() == n
    assert faults < 100, f"{faults} page faults re-allocating a freed 4 MB block"


@pytest.mark.parametrize("variable, value", [("AXON_KEEP_FREED_MEMORY", "0"), ("MALLOC_TRIM_THRESHOLD_", "131072"),
                                             ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072")])
def test_the_users_setting_wins(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert malloc.keep_freed_memory() is False
