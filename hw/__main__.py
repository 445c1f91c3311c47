"""`python -m hw` runs the simulator CLI (same as `python -m hw.sim`)."""

import sys

from hw.sim import main

sys.exit(main())
