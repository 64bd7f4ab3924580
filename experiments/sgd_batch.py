"""sgd-batch: SGD's implicit regularization against h/B, and the explicit SGD regularizer at a large batch

Runs what `implicit-reg reproduce sgd-batch` runs; the experiment itself is
`implicit_reg/experiments/sgd_batch.py`. Usage::

    python experiments/sgd_batch.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("sgd-batch")
