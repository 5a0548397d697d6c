"""``python -m speechtune.cli``: the ``speechtune`` command (worker processes are started this way)."""

import sys

from speechtune.cli import main

sys.exit(main())
