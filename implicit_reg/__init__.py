"""implicit-reg: optimizers, Hessian probes and experiments for implicit regularization.

Public API (re-exported; the math lives in the submodules):

- :mod:`implicit_reg.core.optim`: ``GD``, ``SGD``, ``EGR``, ``Adam`` (torch.optim optimizers)
- :mod:`implicit_reg.core.sam`: ``SAM``, ``ASAM``, ``GradNormPenalty`` (the SAM-family baselines)
- :mod:`implicit_reg.core.regularizers`: explicit forms of the implicit regularizers
- :mod:`implicit_reg.core.hvp`: the one Hessian-vector product
- :mod:`implicit_reg.core.modified_gradient`: the IGR/EGR gradient, exact and finite-difference
- :mod:`implicit_reg.core.objective`: full-data losses in chunks
- :mod:`implicit_reg.core.modified_equations`: heavy ball's and Adam's implicit terms
  (``heavy_ball_coeff``, ``one_norm_coeff``, ``perturbed_one_norm``)
- :mod:`implicit_reg.core.central_flow`: GD's ``central_flow`` and ``rmsprop_central_flow``
  at the edge of stability
  (its eigensolver: ``implicit_reg.probes.lanczos_eig_solver``)

The probes (``preconditioned_sharpness`` of an adaptive optimizer included) are the
public API of :mod:`implicit_reg.probes`, a layer above these.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    #: the installed distribution's version ("0+unknown" in a source tree that is not installed)
    __version__ = version("implicit-reg")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0+unknown"

from .core.central_flow import CentralFlowResult, central_flow, rmsprop_central_flow
from .core.hvp import grad_and_hvp
from .core.modified_equations import heavy_ball_coeff, one_norm_coeff, perturbed_one_norm
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
    "Adam",
    "SAM",
    "ASAM",
    "GradNormPenalty",
    "grad_and_hvp",
    "igr_coeff",
    "coeff_from_paper_rate",
    "paper_rate_from_coeff",
    "gradient_norm_penalty",
    "sgd_implicit_regularizer",
    "momentum_implicit_factor",
    "heavy_ball_coeff",
    "one_norm_coeff",
    "perturbed_one_norm",
    "central_flow",
    "rmsprop_central_flow",
    "CentralFlowResult",
]
