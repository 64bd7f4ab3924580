"""Entry point: ``python experiments/sample_wise_linear.py --scale small`` (see implicit_reg.experiments)."""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("sample-wise-linear")
