"""Check your own attention class: ``python scripts/check_attention.py my_attn.py:MultiHeadAttention``;
the same as ``tinylm check-attention``. Prints a checklist and names the mistake it finds."""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["check-attention", *sys.argv[1:]])
