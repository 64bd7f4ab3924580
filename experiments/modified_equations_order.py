"""modified-equations-order: heavy ball, RMSProp and Adam: one step is O(h²) from the optimizer's flow and O(h³) from its modified flow

Runs what `implicit-reg reproduce modified-equations-order` runs; the experiment itself is
`implicit_reg/experiments/modified_equations_order.py`. Usage::

    python experiments/modified_equations_order.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("modified-equations-order")
