"""What a run holds beside the model: its processes (:mod:`.processes`), its directory lock
(:mod:`.run_lock`), checkpoint reading (:mod:`.checkpoint_io`) and atomic export folders
(:mod:`.export_dir`)."""
