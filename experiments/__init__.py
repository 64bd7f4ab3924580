"""Reproductions of published results, one file per result.

Each ``experiments/<stem>.py`` is the experiment ``<stem>`` with ``_`` written
as ``-`` (``igr_toy.py`` is ``igr-toy``) and exposes ``NAME``, ``TITLE`` and
``run(scale, out) -> implicit_reg.reproduce.Report``. Run one with

    implicit-reg reproduce igr-toy --scale small --out out/igr-toy

Files starting with ``_`` hold helpers shared by several experiments. The
directory is loaded by :mod:`implicit_reg.reproduce` as the package
``implicit_reg_experiments``, so use relative imports between these files.
"""
