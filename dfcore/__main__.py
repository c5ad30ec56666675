"""``python -m dfcore <stage>``: see :mod:`dfcore.cli`."""

import sys

from dfcore.cli import main

sys.exit(main())
