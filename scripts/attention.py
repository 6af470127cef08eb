"""Draw a checkpoint's attention on a prompt, and print every head's diagnostics:

    python scripts/attention.py ckpt=outputs/<date>/<time> prompt="To be, or not to be" out=attn.png

The same as ``tinylm attention``; ``layer=`` and ``head=`` pick one layer or head.
"""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["attention", *sys.argv[1:]])
