"""``python -m scatd_core.cli``: the same as the ``scatd`` command."""

import sys

from scatd_core.cli import main

sys.exit(main())
