"""Curvature and flatness probes: model + loss + data → numbers.

Everything is computed on the full data set in chunks, through the one HVP
(:func:`implicit_reg.core.hvp.grad_and_hvp`), over the trainable parameters only,
and leaves the model exactly as found (:func:`preserved`). Default
evaluation mode is ``"eval"``.

Plain PyTorch use::

    from implicit_reg.probes import HessianOperator, lanczos, hutchpp, slq_density

    op = HessianOperator(model, nn.CrossEntropyLoss(), (X, y), chunk_size=1024)
    HV = op.matmat(V)                         # V: (dim, b), one pass per block
    top = lanczos(op, k=5)                    # eigenvalues, eigenvectors, residuals
    bottom = lanczos(op, k=1, which="SA")     # most negative eigenvalue
    tr = hutchpp(op, n_hvp=99)                # tr.estimate ± tr.stderr
    dens = slq_density(op)                    # dens.grid, dens.density

Gauss–Newton and Fisher: :class:`GGNOperator`, :class:`FisherOperator`
(same interface). One layer: ``HessianOperator(..., params="layers.0")``;
every layer: :func:`layer_table`.

For the training engine: :func:`run_probes` with names from :data:`PROBES`.
"""

from .bounds import (
    SigmaSearch,
    SpectralComplexity,
    classification_margins,
    margin_quantile,
    pacbayes_bound,
    pacbayes_measures,
    pacbayes_sigma,
    path_norm,
    spectral_complexity,
)
from .curvature import FISHER_KINDS, FisherOperator, GGNOperator
from .density import DensityResult, slq_density
from .eigen import (
    EigResult,
    arpack_eigsh,
    default_block_size,
    default_tol,
    lanczos,
    power_iteration,
    ritz_residuals,
)
from .flatness import (
    Estimate,
    dist_from_init,
    eps_sharpness,
    gaussian_sharpness,
    geometric_complexity,
    grad_norm_sq,
    weight_norms,
)
from .landscape import filter_normalized_direction
from .layers import format_table, layer_table
from .operator import (
    DEFAULT_BLOCK_MEMORY,
    CurvatureOperator,
    HessianOperator,
    MatrixOperator,
    as_linear_operator,
)
from .preconditioned import (
    PreconditionedOperator,
    adaptive_eos_threshold,
    adaptive_preconditioner,
    preconditioned_sharpness,
)
from .registry import DEFAULT_OPTIONS, PROBES, WARM_KEYS, lanczos_eig_solver, run_probes
from .selection import module_groups, select_params
from .slices import (
    Slice1D,
    Slice2D,
    loss_slice_1d,
    loss_slice_2d,
    top_eigenvector_directions,
)
from .state import DEFAULT_MODE, MODES, preserved, seeded_rng
from .trace import TraceResult, hutchinson, hutchpp

__all__ = [
    "CurvatureOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "FISHER_KINDS",
    "DEFAULT_BLOCK_MEMORY",
    "select_params",
    "module_groups",
    "layer_table",
    "format_table",
    "WARM_KEYS",
    "default_block_size",
    "MatrixOperator",
    "as_linear_operator",
    "EigResult",
    "lanczos",
    "arpack_eigsh",
    "power_iteration",
    "ritz_residuals",
    "PreconditionedOperator",
    "preconditioned_sharpness",
    "adaptive_preconditioner",
    "adaptive_eos_threshold",
    "lanczos_eig_solver",
    "default_tol",
    "TraceResult",
    "hutchinson",
    "hutchpp",
    "DensityResult",
    "slq_density",
    "Estimate",
    "grad_norm_sq",
    "weight_norms",
    "dist_from_init",
    "eps_sharpness",
    "gaussian_sharpness",
    "geometric_complexity",
    "classification_margins",
    "margin_quantile",
    "path_norm",
    "SpectralComplexity",
    "spectral_complexity",
    "SigmaSearch",
    "pacbayes_sigma",
    "pacbayes_bound",
    "pacbayes_measures",
    "Slice1D",
    "Slice2D",
    "filter_normalized_direction",
    "top_eigenvector_directions",
    "loss_slice_1d",
    "loss_slice_2d",
    "preserved",
    "seeded_rng",
    "MODES",
    "DEFAULT_MODE",
    "PROBES",
    "DEFAULT_OPTIONS",
    "run_probes",
]
