"""hyperopt: research optimizers for NumPy training loops, with Vulkan compute-shader kernels.

Optimizers: AdamW, HypergradientAdamW, AutoHypergradientAdamW, HIOptimizer (HysteroGrad), AutoSGM,
HCNaturalGrad, HL; torch-style learning-rate schedulers (``hyperopt.lr_scheduler``), AutoSGM's
windows as schedules (``Window``, ``WindowLR``) and ``clip_grad_norm_``.

Terms used throughout the docstrings:

*upstream*
    the published code an optimizer follows (linked, with its version, in the optimizer's class
    docstring): HysteroGrad's repository, grilly's hypergradient optimizers, the AutoSGM
    repository, the qml-hcs wheel, unaiverse's HL.  "Upstream's numbers" are the trajectories that
    code produces, which the tests replay; "deliberate differences from upstream" list where this
    library chooses otherwise, and why.
*upstream's interface*
    upstream's own calling convention where it differs from torch's, kept alongside it: AutoSGM's
    configuration tuples, HCNaturalGrad's functional ``step_params``.  (Older notes call the short
    specifications these optimizers were first described by "the seed"; the docstrings no longer do.)
"""
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
from .checkpoint import CheckpointError, load, save

__all__ = ["Optimizer", "AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM",
           "HCNaturalGrad", "HL", "Window", "WindowLR", "LambdaLR", "StepLR", "MultiStepLR", "ExponentialLR",
           "CosineAnnealingLR", "LinearLR", "SequentialLR", "clip_grad_norm_", "save", "load", "CheckpointError"]
__version__ = "0.1.0"
