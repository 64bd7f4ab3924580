"""Entry point: ``python experiments/epoch_wise_network.py --scale small`` (see implicit_reg.experiments)."""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("epoch-wise-network")
