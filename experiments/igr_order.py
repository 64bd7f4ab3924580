"""igr-order: Backward error analysis: GD's one-step error is O(h²) against the flow of L, O(h³) against the flow of L̃

Runs what `implicit-reg reproduce igr-order` runs; the experiment itself is
`implicit_reg/experiments/igr_order.py`. Usage::

    python experiments/igr_order.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("igr-order")
