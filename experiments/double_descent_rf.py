"""double-descent-rf: Double descent of min-norm random-features regression on MNIST-1D

Runs what `implicit-reg reproduce double-descent-rf` runs; the experiment itself is
`implicit_reg/experiments/double_descent_rf.py`. Usage::

    python experiments/double_descent_rf.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("double-descent-rf")
