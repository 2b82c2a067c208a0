"""float64 parameters on the CPU path get double-precision hyperparameters (not float32-rounded)."""
import numpy as np
import pytest
import torch

from hyperopt import AdamW


@pytest.mark.parametrize("amsgrad", [False, True])
def test_float64_adamw_matches_torch_float64(amsgrad):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(1000)
    ref = torch.tensor(p.copy(), requires_grad=True)
    lr, wd, eps = 1e-3 + 1e-11, 0.1 + 1e-12, 1e-8          # values float32 cannot hold
    opt = AdamW([p], lr=lr, weight_decay=wd, eps=eps, amsgrad=amsgrad, use_gpu=False)
    t_opt = torch.optim.AdamW([ref], lr=lr, weight_decay=wd, eps=eps, amsgrad=amsgrad, foreach=False)
    for _ in range(5):
        g = rng.standard_normal(1000)
        opt.step(gradients=[g])
        ref.grad = torch.tensor(g)
        t_opt.step()
    np.testing.assert_allclose(p, ref.detach().numpy(), rtol=1e-14, atol=1e-15)


def test_mixed_float32_and_float64_parameters_on_the_cpu_path():
    rng = np.random.default_rng(1)
    a32, b64 = rng.standard_normal(100).astype(np.float32), rng.standard_normal(50)
    alone32, alone64 = a32.copy(), b64.copy()
    mixed = AdamW([a32, b64], lr=1e-3 + 1e-11, use_gpu=False)
    only32 = AdamW([alone32], lr=1e-3 + 1e-11, use_gpu=False)
    only64 = AdamW([alone64], lr=1e-3 + 1e-11, use_gpu=False)
    for _ in range(3):
        g32, g64 = rng.standard_normal(100).astype(np.float32), rng.standard_normal(50)
        mixed.step(gradients=[g32, g64])
        only32.step(gradients=[g32])
        only64.step(gradients=[g64])
    assert a32.dtype == np.float32 and b64.dtype == np.float64
    np.testing.assert_array_equal(a32, alone32)     # float32 arithmetic for the float32 parameter
    np.testing.assert_array_equal(b64, alone64)     # double-precision scalars for the float64 one
