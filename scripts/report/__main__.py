"""`python -m scripts.report` (the Makefile's `make report`)."""

import sys

from scripts.report.cli import main

sys.exit(main())
