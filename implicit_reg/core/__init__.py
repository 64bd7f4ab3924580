"""The math: the one HVP, the modified gradient, the chunked objective, update rules and optimizers.

Imports nothing else of the package. Submodules: :mod:`.hvp`,
:mod:`.modified_gradient`, :mod:`.objective` (full-data loss in chunks),
:mod:`.optim` (``GD``, ``SGD``, ``EGR``), :mod:`.regularizers`.
"""
