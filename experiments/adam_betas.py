"""adam-betas: does full-batch Adam regularize or anti-regularize, as its modified equation says?

Runs what `implicit-reg reproduce adam-betas` runs; the experiment itself is
`implicit_reg/experiments/adam_betas.py`. Usage::

    python experiments/adam_betas.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("adam-betas")
