"""The trainers' GPU switches, checked on CPU: ``compile`` follows the eager run (the same math, fused kernels);
``amp=bf16`` runs the forward under bfloat16 autocast while parameters and optimiser state stay float32, and its
losses track float32's to bfloat16 precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.baselines.test_sasrec import _planted
from thinkrec.baselines.sasrec import SASRecConfig, train_sasrec
from thinkrec.data.splits import leave_one_out
from thinkrec.utils.training import autocast


def _train(**switches) -> tuple[list[float], torch.nn.Module]:
    cfg = SASRecConfig(d_model=16, n_layers=1, n_heads=2, dropout=0.0, max_len=10, lr=5e-3, batch_size=64, epochs=1,
                       patience=5, warmup_steps=2, **switches)
    steps: list[dict] = []
    model, _ = train_sasrec(leave_one_out(_planted(n_users=200)), cfg, log=lambda m: None, on_step=steps.append)
    return [s["loss"] for s in steps], model


def test_autocast_contexts():
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", "off"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="amp must be one of"):
        autocast("cpu", "fp8")


def test_bf16_autocast_tracks_float32_and_keeps_float32_weights():
    ref, _ = _train()
    bf16, model = _train(amp="bf16")
    assert len(bf16) == len(ref) > 2
    np.testing.assert_allclose(bf16, ref, rtol=3e-2)  # bfloat16 has an 8-bit mantissa
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_compiled_training_follows_eager():
    pytest.importorskip("torch._inductor")
    ref, eager = _train()
    comp, compiled = _train(compile=True)
    np.testing.assert_allclose(comp, ref, rtol=1e-4, atol=1e-5)
    for (k, a), b in zip(eager.state_dict().items(), compiled.state_dict().values(), strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4, err_msg=k)  # the saved module is the plain one
