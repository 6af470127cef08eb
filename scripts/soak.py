"""A soak run: ``python scripts/soak.py`` trains 2,000 steps with checkpoints and logging and
reports peak memory (RSS) early and late in the run; growth beyond soak.tolerance_mb exits
with status 1. The same as ``tinylm soak``; settings: configs/soak.yaml.
"""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["soak", *sys.argv[1:]])
