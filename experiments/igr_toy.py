"""igr-toy: IGR on a two-parameter model: GD lands on flatter, lower-norm minima than gradient flow

Runs what `implicit-reg reproduce igr-toy` runs; the experiment itself is
`implicit_reg/experiments/igr_toy.py`. Usage::

    python experiments/igr_toy.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("igr-toy")
