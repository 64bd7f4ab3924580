"""Config, the training loop, run records, the result store, sweeps and their backends.

Imports the layers below: core, probes, ensemble, workloads.
"""
