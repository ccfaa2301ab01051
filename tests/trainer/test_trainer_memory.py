"""trainer.memory: big freed blocks stay with the process, so the next step
does not page-fault them in again (a real glibc, in a fresh process each)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from trainer_helpers import ROOT

CHILD = """
import resource, sys
import torch
from trainer.memory import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
x = torch.randn(8, 16, 128, 128)
conv = torch.nn.Conv2d(16, 64, 3, padding=1)  # its output: 33.5 MB, over malloc's largest mmap threshold
with torch.no_grad():
    for step in range(6):
        if step == 2:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = torch.relu(conv(x))
        del y
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    res = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return int(res.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_big_blocks_are_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("kept")
    pages = 4 * (33_554_432 // 4096)  # four steps of one 33.5 MB output each
    assert default > pages  # every step's blocks mmap'd afresh and faulted in page by page
    assert kept < default / 4  # served again from the heap the process already has
