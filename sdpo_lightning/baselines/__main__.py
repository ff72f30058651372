"""``python -m sdpo_lightning.baselines`` = ``sdpo-baseline``."""

from sdpo_lightning.baselines.cli import main

raise SystemExit(main())
