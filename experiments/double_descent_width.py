"""double-descent-width: Model-wise double descent with 15% label noise: MNIST-1D (cross-entropy) and MNIST (squared loss)

Runs what `implicit-reg reproduce double-descent-width` runs; the experiment itself is
`implicit_reg/experiments/double_descent_width.py`. Usage::

    python experiments/double_descent_width.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("double-descent-width")
