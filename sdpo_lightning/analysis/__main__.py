"""``python -m sdpo_lightning.analysis``: same as the ``sdpo-plots`` command."""

import sys

from sdpo_lightning.analysis.cli import main

sys.exit(main())
