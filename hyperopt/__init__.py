"""hyperopt: research optimizers for NumPy training loops, with Vulkan compute-shader kernels."""
from .optimizer import Optimizer
from .adamw import AdamW
from .hypergradient import AutoHypergradientAdamW, HypergradientAdamW
from .hysterograd import HIOptimizer
from .autosgm import AutoSGM
from .natural_grad import HCNaturalGrad
from .hamiltonian import HL
from .schedules import Window, WindowLR
from .checkpoint import CheckpointError, load, save

__all__ = ["Optimizer", "AdamW", "HypergradientAdamW", "AutoHypergradientAdamW", "HIOptimizer", "AutoSGM",
           "HCNaturalGrad", "HL", "Window", "WindowLR", "save", "load",
           "CheckpointError"]
__version__ = "0.1.0"
