"""Write a checkpoint in the Hugging Face format (transformers, the Hub):

    python scripts/export.py ckpt=outputs/<date>/<time> out=my-model

The same as ``tinylm export``; settings and their defaults: configs/export.yaml.
"""

import sys

from tinylm.cli import main

if __name__ == "__main__":
    main(["export", *sys.argv[1:]])
