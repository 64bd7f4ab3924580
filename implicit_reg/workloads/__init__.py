"""What is trained: models (:mod:`.models`), data sets (:mod:`.data`) and losses (:mod:`.losses`).

Imports only :mod:`implicit_reg.core`.
"""
