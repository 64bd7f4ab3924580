"""Config, the training loop, run records, the result store, sweeps and their backends.

Imports the layers below: core, probes, ensemble, workloads. Inside, imports run
config → workload, optimizers, record, checkpoint → steppers, loop, store → train
→ plan → backends → sweep, ray_backend:

- ``config``: :class:`~implicit_reg.engine.config.RunConfig` and the name lists;
- ``workload``: a config's data, loss and initialized model (``init_from``);
- ``optimizers``: ``build_optimizer``, the one place a config becomes an optimizer;
- ``steppers``: one model and its optimizer, or a vectorized ensemble;
- ``loop``: the one training loop (schedule, stopping, divergence, checkpoints);
- ``record``: ``RunResult``, the summary and "failed" builders, metadata;
- ``checkpoint``: reading and writing checkpoint files;
- ``train``: ``run`` (one run) and ``train_runs`` (an ensemble);
- ``store``: the directory layout, atomic writes;
- ``plan``, ``backends``, ``sweep``, ``ray_backend``: sweeps and where they run;
- ``probing``: probes of a saved or freshly built model.
"""
