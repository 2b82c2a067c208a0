"""Small example models with closed-form gradients, for the optimizers that need a stateful model."""
from .tiny_ssm import TinySSM  # noqa: F401
