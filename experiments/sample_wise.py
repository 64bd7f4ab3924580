"""sample-wise: Sample-wise non-monotonicity: test error against the number of training samples at a fixed width (MNIST-1D, 15% label noise)

Runs what `implicit-reg reproduce sample-wise` runs; the experiment itself is
`implicit_reg/experiments/sample_wise.py`. Usage::

    python experiments/sample_wise.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("sample-wise")
