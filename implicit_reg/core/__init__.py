"""The math: the one HVP, the modified gradient, the chunked objective, update rules and optimizers.

Imports nothing else of the package. Submodules: :mod:`.hvp`,
:mod:`.modified_gradient`, :mod:`.sharpness` (SAM/ASAM/penalty gradients),
:mod:`.objective` (full-data loss in chunks), :mod:`.updates` (update rules as
pure functions), :mod:`.optim` (``GD``, ``SGD``, ``EGR``), :mod:`.sam` (``SAM``,
``ASAM``, ``GradNormPenalty``), :mod:`.regularizers`,
:mod:`.modified_equations` (modified flows of heavy ball, RMSProp, Adam),
:mod:`.central_flow` (GD's central flow at the edge of stability).
"""
