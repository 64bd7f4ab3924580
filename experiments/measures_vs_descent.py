"""measures-vs-descent: Which measure moves with the test error through the second descent? (MNIST-1D width sweep, 15% noise against clean labels)

Runs what `implicit-reg reproduce measures-vs-descent` runs; the experiment itself is
`implicit_reg/experiments/measures_vs_descent.py`. Usage::

    python experiments/measures_vs_descent.py --scale small [--out DIR]

The long runs train (and are measured) in the background, resumably, with::

    python -m implicit_reg.experiments.measures_vs_descent small out/measures-vs-descent/sweep
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("measures-vs-descent")
