"""double-descent-epochs: Epoch-wise double descent with 15% label noise: test error against training time for small, medium and large MLPs on MNIST-1D

Runs what `implicit-reg reproduce double-descent-epochs` runs; the experiment itself is
`implicit_reg/experiments/double_descent_epochs.py`. Usage::

    python experiments/double_descent_epochs.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("double-descent-epochs")
