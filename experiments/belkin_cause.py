"""belkin-cause: what makes Belkin et al.'s network peak: reuse, initialization variance or interpolation

Runs what `implicit-reg reproduce belkin-cause` runs; the experiment itself is
`implicit_reg/experiments/belkin_cause.py`. Usage::

    python experiments/belkin_cause.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("belkin-cause")
