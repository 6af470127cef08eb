"""Compare runs: ``python scripts/compare.py multirun/<date>/<time> [--sort val_bpc] [--csv]
[--plot curves.png]``. Reads the runs' TensorBoard event files; prints a markdown table."""

from tinylm.cli import exit_on_error
from tinylm.compare import main

if __name__ == "__main__":
    exit_on_error(main)
