"""emc-across-n: Effective model complexity across n: the model-wise peak sits where EMC ≈ n, and more data hurts where n crosses EMC (MNIST-1D, 15% label noise)

Runs what `implicit-reg reproduce emc-across-n` runs; the experiment itself is
`implicit_reg/experiments/emc_across_n.py`. Usage::

    python experiments/emc_across_n.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("emc-across-n")
