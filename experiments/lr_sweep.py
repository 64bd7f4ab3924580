"""lr-sweep: Step size and implicit gradient regularization: full-batch GD stopped at equal training loss, ‖∇L‖², λ_max, tr H, ‖θ‖ and test accuracy against h, and EGR

Runs what `implicit-reg reproduce lr-sweep` runs; the experiment itself is
`implicit_reg/experiments/lr_sweep.py`. Usage::

    python experiments/lr_sweep.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("lr-sweep")
