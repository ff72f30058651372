"""Completion log-probabilities and what serves them: the scoring functions (:mod:`.logps`),
the packed-row layout (:mod:`.packing`), the frozen lower-layer cache (:mod:`.trunk_cache`)
and the on-disk reference table (:mod:`.reference_cache`).

The names of :mod:`.logps` are importable from here too (``sdpo_lightning.scoring`` was that
module before the package existed).
"""

from sdpo_lightning.scoring.logps import (
    MODES,
    CompletionLogps,
    PackedForward,
    check_inputs,
    completion_logps,
    gather_completion_token_logps,
    packed_forward,
    packed_token_logps,
    trim_padding,
)

__all__ = [
    "MODES",
    "CompletionLogps",
    "PackedForward",
    "check_inputs",
    "completion_logps",
    "gather_completion_token_logps",
    "packed_forward",
    "packed_token_logps",
    "trim_padding",
]
