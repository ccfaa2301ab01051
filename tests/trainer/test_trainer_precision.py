"""Which mixed precision `trainer fit --precision` picks for a device."""

from __future__ import annotations

import pytest
import torch

from models.errors import ConfigError
from trainer.loop import autocast_dtype, cpu_has_bf16


def test_fp32_is_plain_everywhere():
    assert autocast_dtype(torch.device("cpu"), "fp32") is None
    assert autocast_dtype(torch.device("cuda"), "fp32") is None


def test_auto_is_fp16_on_cuda_and_bf16_only_on_cpus_that_run_it():
    assert autocast_dtype(torch.device("cuda"), "auto") is torch.float16
    assert autocast_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
    expected = torch.bfloat16 if cpu_has_bf16() else None
    assert autocast_dtype(torch.device("cpu"), "auto") is expected
    assert autocast_dtype(torch.device("cpu"), "bf16") is torch.bfloat16


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        autocast_dtype(torch.device("cpu"), "fp16")
