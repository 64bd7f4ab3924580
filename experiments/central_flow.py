"""central-flow: Central flow: at the edge of stability GD's time-averaged loss and sharpness follow the central flow, not gradient flow

Runs what `implicit-reg reproduce central-flow` runs; the experiment itself is
`implicit_reg/experiments/central_flow.py`. Usage::

    python experiments/central_flow.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("central-flow")
