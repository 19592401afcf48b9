"""`python -m sqzexplore.train ...`: the same as `sqz train ...`."""

import sys

from sqzexplore.train.cli import main

sys.exit(main())
