"""edge-of-stability: Edge of stability: λ_max under full-batch GD sharpens to about 2/h and hovers there

Runs what `implicit-reg reproduce edge-of-stability` runs; the experiment itself is
`implicit_reg/experiments/edge_of_stability.py`. Usage::

    python experiments/edge_of_stability.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("edge-of-stability")
