"""belkin-network: Belkin et al.'s network double descent at N ≈ n·k on MNIST, with and without weight reuse

Runs what `implicit-reg reproduce belkin-network` runs; the experiment itself is
`implicit_reg/experiments/belkin_network.py`. Usage::

    python experiments/belkin_network.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("belkin-network")
