"""hyperopt: research optimizers for NumPy training loops, with Vulkan compute-shader kernels."""
from .optimizer import Optimizer
from .adamw import AdamW
from .hypergradient import AutoHypergradientAdamW, HypergradientAdamW
from .hysterograd import HIOptimizer
from .autosgm import AutoSGM
from .natural_grad import HCNaturalGrad
from .hamiltonian import HL
from .schedules import Window, WindowLR
from .lr_scheduler import (CosineAnnealingLR, ExponentialLR, LambdaLR, LinearLR, MultiStepLR, SequentialLR,
                           StepLR)
from .utils import clip_grad_norm_

__all__ = ["Optimizer", "AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM",
           "HCNaturalGrad", "HL", "Window", "WindowLR", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "SequentialLR", "clip_grad_norm_"]
__version__ = "0.1.0"
