"""Benchmark cases for HysteroGrad: ``factory(params, use_gpu, device)`` returns a ready optimizer."""
from hyperopt.hysterograd import HIOptimizer


def hioptimizer(params, use_gpu, device):
    # the upstream Moons example's settings
    return HIOptimizer(params, lr=0.01, stiffening_factor=0.05, use_gpu=use_gpu, device=device)


CASES = {"HIOptimizer": hioptimizer}
