"""flat-optimizers: Flat minima by other means: GD at a small and a large step, EGR and SAM at the small step, stopped at equal training loss

Runs what `implicit-reg reproduce flat-optimizers` runs; the experiment itself is
`implicit_reg/experiments/flat_optimizers.py`. Usage::

    python experiments/flat_optimizers.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("flat-optimizers")
