"""``python -m monteclora_pyro``: the ``monteclora`` command (also under ``accelerate launch``)."""

import sys

from monteclora_pyro.cli import main

if __name__ == "__main__":
    sys.exit(main())
