"""Benchmark cases for the hypergradient AdamWs: ``factory(params, use_gpu, device)`` returns a ready optimizer."""
from hyperopt.hypergradient import AutoHypergradientAdamW, HypergradientAdamW


def hypergradient_adamw(params, use_gpu, device):
    return HypergradientAdamW(params, lr=1e-3, use_gpu=use_gpu, device=device)


def auto_hypergradient_adamw(params, use_gpu, device):
    # every reduction on from the second step: <g,d>, <g,m>, |g|^2, |g-ema|^2 and |d|^2
    return AutoHypergradientAdamW(params, lr=1e-3, adapt_momentum=True, track_surprise=True, warmup_steps=0,
                                  use_gpu=use_gpu, device=device)


CASES = {"HypergradientAdamW": hypergradient_adamw, "AutoHypergradientAdamW": auto_hypergradient_adamw}
