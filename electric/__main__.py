"""`python -m electric ...` is the `electric` command."""

import sys

from electric.cli import main

sys.exit(main())
