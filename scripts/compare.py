"""Compare runs: ``python scripts/compare.py multirun/<date>/<time> [sort=val_bpc] [csv=true]
[plot=curves.png]``; the same as ``tinylm compare``. Reads the runs' TensorBoard event files
and prints a markdown table."""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
