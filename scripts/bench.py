"""Benchmarks, one JSON object on the last line of output:

    python scripts/bench.py experiment=cpu_quick bench.steps=200
    python scripts/bench.py bench.task=sample model=baby bench.new_tokens=500

The same as ``tinylm bench``; settings: every training key, plus bench.* (configs/bench.yaml).
"""

import sys

from tinylm import command as main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
