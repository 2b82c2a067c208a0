"""hyperopt: research optimizers for NumPy training loops, with Vulkan compute-shader kernels."""
from .optimizer import Optimizer
from .adamw import AdamW
from .hypergradient import AutoHypergradientAdamW, HypergradientAdamW
from .hysterograd import HIOptimizer

__all__ = ["Optimizer", "AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer"]
__version__ = "0.1.0"
