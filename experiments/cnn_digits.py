"""cnn-digits: Model-wise and epoch-wise double descent of Nakkiran et al.'s CNN family on real MNIST digits

Runs what `implicit-reg reproduce cnn-digits` runs; the experiment itself is
`implicit_reg/experiments/cnn_digits.py`. Usage::

    python experiments/cnn_digits.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("cnn-digits")
