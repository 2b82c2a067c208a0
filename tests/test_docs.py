"""Documentation a reader relies on: each optimizer names its paper or source and the code it
follows, with links; "upstream" is defined; every public method has its own docstring; step()
documents the gradient forms."""
import inspect
import pydoc

import pytest

import hyperopt
from hyperopt import (AdamW, AutoHypergradientAdamW, AutoSGM, HCNaturalGrad, HIOptimizer, HL, HypergradientAdamW,
                      Optimizer, Window, WindowLR, lr_scheduler)

OPTIMIZERS = [AdamW, HypergradientAdamW, AutoHypergradientAdamW, HIOptimizer, AutoSGM, HCNaturalGrad, HL]
LINKS = {
    "AdamW": ["arxiv.org/abs/1711.05101"],
    "HypergradientAdamW": ["arxiv.org/abs/1703.04782", "github.com/Grillcheese-AI/grilly"],
    "AutoHypergradientAdamW": ["arxiv.org/abs/1703.04782", "arxiv.org/abs/2502.11229"],
    "HIOptimizer": ["github.com/dingste/HysteroGrad"],
    "AutoSGM": ["github.com/somefunAgba/autosgm"],
    "HCNaturalGrad": ["pypi.org/project/qml-hcs"],
    "HL": ["arxiv.org/abs/2409.12038", "github.com/collectionlessai/unaiverse-src"],
}


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_class_docstring_links_paper_and_code(cls):
    doc = cls.__doc__
    for link in LINKS[cls.__name__]:
        assert link in doc, f"{cls.__name__}: no link to {link}"


def test_upstream_is_defined_once_in_the_package_docstring():
    assert "*upstream*" in hyperopt.__doc__
    for cls in OPTIMIZERS:
        assert "the seed" not in (cls.__doc__ or "")


@pytest.mark.parametrize("cls", OPTIMIZERS + [Optimizer, Window, WindowLR, lr_scheduler.CosineAnnealingLR,
                                              lr_scheduler.SequentialLR], ids=lambda c: c.__name__)
def test_every_public_method_has_its_own_docstring(cls):
    missing = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_"):
            continue
        func = member.fget if isinstance(member, property) else member
        if not callable(func) and not isinstance(member, property):
            continue
        if not (getattr(func, "__doc__", None) or "").strip():
            missing.append(name)
    assert not missing, f"{cls.__name__}: undocumented {missing}"


def test_step_documents_gradient_forms_and_help_shows_no_section_comment():
    doc = Optimizer.step.__doc__
    for form in ("id(param)", "aligned with ``params()``", ".grad", "returns the closure's loss"):
        assert form in doc
    text = pydoc.render_doc(AdamW, renderer=pydoc.plaintext)
    zero_grad = text[text.index("zero_grad("):].split("\n |  \n")[0]
    assert "-----" not in zero_grad and "Clear ``.grad``" in zero_grad
