"""Sample text from a checkpoint:

    python scripts/sample.py ckpt=outputs/<date>/<time> prompt="ROMEO:" max_new_tokens=500

The same as ``tinylm sample``; settings and their defaults: configs/sample.yaml.
"""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["sample", *sys.argv[1:]])
