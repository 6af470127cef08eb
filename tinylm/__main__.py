"""``python -m tinylm <command> ...``: the same as the ``tinylm`` command."""

from tinylm import command

command()
