"""hyperopt: research optimizers for NumPy training loops, with Vulkan compute-shader kernels."""
from .optimizer import Optimizer
from .adamw import AdamW

__all__ = ["Optimizer", "AdamW"]
__version__ = "0.1.0"
