"""adaptive-eos: Adaptive edge of stability: under full-batch Adam λ_max(P⁻¹H) rises to (2 + 2β₁)/((1 − β₁)η) and hovers there

Runs what `implicit-reg reproduce adaptive-eos` runs; the experiment itself is
`implicit_reg/experiments/adaptive_eos.py`. Usage::

    python experiments/adaptive_eos.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("adaptive-eos")
