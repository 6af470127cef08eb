"""``python <this file> <command> key=value ...`` is ``tinylm <command> key=value ...``.

Lightning's ``ddp`` starts each further process of a run by running ``sys.argv`` again, and the
``tinylm`` command itself is no file Python can run; so while a command runs, the CLI points
``sys.argv[0]`` here. The file ships inside the package, so an installed tinylm relaunches as a
checkout does. It sits in a directory of its own, under a name nothing imports, because Python
puts a script's directory first on ``sys.path``.
"""

import sys

from tinylm.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
