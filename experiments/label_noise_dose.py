"""label-noise-dose: Label-noise dose–response: the model-wise peak grows with the noise and sits where the training set is first fitted (MNIST-1D)

Runs what `implicit-reg reproduce label-noise-dose` runs; the experiment itself is
`implicit_reg/experiments/label_noise_dose.py`. Usage::

    python experiments/label_noise_dose.py --scale small [--out DIR]
"""

from implicit_reg.experiments import main

if __name__ == "__main__":
    main("label-noise-dose")
