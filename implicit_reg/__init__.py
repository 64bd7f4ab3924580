"""implicit-reg: optimizers, Hessian probes and experiments for implicit regularization.

Public API (re-exported; the math lives in the submodules):

- :mod:`implicit_reg.core.optim`: ``GD``, ``SGD``, ``EGR``, ``Adam`` (torch.optim optimizers)
- :mod:`implicit_reg.core.sam`: ``SAM``, ``ASAM``, ``GradNormPenalty`` (the SAM-family baselines)
- :mod:`implicit_reg.core.regularizers`: explicit forms of the implicit regularizers
- :mod:`implicit_reg.core.hvp`: the one Hessian-vector product
- :mod:`implicit_reg.core.modified_gradient`: the IGR/EGR gradient, exact and finite-difference
- :mod:`implicit_reg.core.objective`: full-data losses in chunks
"""

from importlib.metadata import PackageNotFoundError, version

try:
    #: the installed distribution's version ("0+unknown" in a source tree that is not installed)
    __version__ = version("implicit-reg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

from .core.hvp import grad_and_hvp
from .core.modified_gradient import coeff_from_paper_rate, igr_coeff, paper_rate_from_coeff
from .core.optim import EGR, GD, SGD, Adam
from .core.regularizers import (
    gradient_norm_penalty,
    momentum_implicit_factor,
    sgd_implicit_regularizer,
)
from .core.sam import ASAM, SAM, GradNormPenalty

__all__ = [
    "__version__",
    "GD",
    "SGD",
    "EGR",
    "SAM",
    "Adam",
    "ASAM",
    "GradNormPenalty",
    "grad_and_hvp",
    "igr_coeff",
    "coeff_from_paper_rate",
    "paper_rate_from_coeff",
    "gradient_norm_penalty",
    "sgd_implicit_regularizer",
    "momentum_implicit_factor",
]
