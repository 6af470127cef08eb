"""Which heads carry a prediction: activation patching, one head at a time:

    python scripts/patch.py ckpt=outputs/<date>/<time> clean="..." corrupt="..." out=patch.png

The same as ``tinylm patch``.
"""

import sys

from tinylm.cli import main

if __name__ == "__main__":
    main(["patch", *sys.argv[1:]])
