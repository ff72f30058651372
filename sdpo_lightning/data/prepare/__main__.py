"""``python -m sdpo_lightning.data.prepare`` — same as ``sdpo-prepare``."""

import sys

from sdpo_lightning.data.prepare.cli import main

sys.exit(main())
