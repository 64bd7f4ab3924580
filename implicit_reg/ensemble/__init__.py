"""Many same-architecture runs as one ``torch.func`` computation (``vmap`` over stacked parameters).

:mod:`.vectorized` (the ensemble, its gradients and updates) and
:mod:`.probes` (λ_max and trace of every member at once). Imports
:mod:`implicit_reg.core` and :mod:`implicit_reg.probes`.
"""
