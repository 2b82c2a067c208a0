"""Every per-element kernel, declared once with its NumPy twin (see ``core``).

Each module of this package declares the kernels of one optimizer; all are imported here so that
the table is complete once ``hyperopt.kernels`` is imported.
"""
import importlib
import pkgutil

from .core import CONTROL, ELEMENTWISE, KERNELS, Kernel, kernel  # noqa: F401
from .adamw import adamw_update  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
