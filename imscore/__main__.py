"""``python -m imscore`` is the ``imscore`` command."""

import sys

from imscore.cli import main

sys.exit(main())
