"""train.precision: bf16 autocast for the training step where the hardware has it natively."""
from __future__ import annotations

import pytest
import torch

from raytag.config import Config, ConfigError
from raytag.training import precision
from raytag.training.precision import native_bf16_in, resolve_precision, training_autocast

CPU = torch.device("cpu")
CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4000\n"


def test_native_bf16_is_read_from_the_cpus_flags():
    assert native_bf16_in(CPUINFO.format(extra="avx512f avx512_bf16"))
    assert native_bf16_in(CPUINFO.format(extra="amx_tile amx_bf16"))
    assert not native_bf16_in(CPUINFO.format(extra="avx512f avx512bw"))  # oneDNN would emulate bf16: slower
    assert not native_bf16_in("")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_trains_in_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"


def test_an_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="train.precision.*fp16"):
        Config.from_dict({"train": {"precision": "fp16"}})
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_under_bf16_the_products_run_in_bf16_and_the_weights_and_gradients_stay_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.randn(2, 1, 8, 8)
    with training_autocast("bf16", CPU):
        logits = model(x)
    assert logits.dtype == torch.bfloat16
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.rand(2, 3))
    loss.backward()
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    with training_autocast("fp32", CPU):
        assert model(x).dtype == torch.float32
