"""``python -m implicit_reg ...`` is the ``implicit-reg`` command line."""

from .cli import app

app(prog_name="implicit-reg")
