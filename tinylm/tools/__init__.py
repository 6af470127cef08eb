"""The lab: tools that measure tinylm rather than train it, each a ``tinylm`` subcommand.

- ``bench``: speed (training, data, sampling, norms, the nanoGPT speedrun); its figures go to
  docs/performance.md;
- ``soak``: a long run watching the process's memory for growth.
"""
