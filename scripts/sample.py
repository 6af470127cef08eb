"""Sample text from a checkpoint:

    python scripts/sample.py ckpt=outputs/<date>/<time> prompt="ROMEO:" max_new_tokens=500

Settings and their defaults: configs/sample.yaml. Also installed as ``tinylm-sample``.
"""

from tinylm.sample import main

if __name__ == "__main__":
    main()
