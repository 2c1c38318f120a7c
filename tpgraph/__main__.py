"""``python -m tpgraph``: the same as the ``tpgraph`` command."""

import sys

from .cli import main

sys.exit(main())
