"""Train a character-level Transformer: ``python scripts/train.py model.heads=4``.

The same as ``tinylm train``; every key of configs/train.yaml can be overridden on the command
line, and ``-m`` sweeps over comma-separated values.
"""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
