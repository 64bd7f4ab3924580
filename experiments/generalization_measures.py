"""generalization-measures: Which measure of simplicity tracks generalization? Kendall τ of flatness, norm and complexity measures with the generalization gap

Runs what `implicit-reg reproduce generalization-measures` runs; the experiment itself is
`implicit_reg/experiments/generalization_measures.py`. Usage::

    python experiments/generalization_measures.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("generalization-measures")
