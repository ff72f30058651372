"""Exported adapter configs are byte-stable: ``target_modules`` sorted (peft writes a set)."""

from __future__ import annotations

import json
from pathlib import Path

from sdpo_lightning.runtime.export_dir import sort_adapter_modules


def test_target_modules_are_sorted_and_the_rest_kept(tmp_path: Path) -> None:
    config = {
        "r": 16,
        "target_modules": ["v_proj", "down_proj", "q_proj"],
        "task_type": "CAUSAL_LM",
    }
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    sort_adapter_modules(tmp_path)
    text = path.read_text()
    assert json.loads(text) == {**config, "target_modules": ["down_proj", "q_proj", "v_proj"]}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True)  # peft's layout
    # two orders of the same set give the same bytes; a string or a missing file is left alone
    other = tmp_path / "b"
    other.mkdir()
    (other / "adapter_config.json").write_text(
        json.dumps(
            {**config, "target_modules": ["q_proj", "v_proj", "down_proj"]},
            indent=2,
            sort_keys=True,
        )
    )
    sort_adapter_modules(other)
    assert (other / "adapter_config.json").read_text() == text
    regex = tmp_path / "c"
    regex.mkdir()
    (regex / "adapter_config.json").write_text('{"target_modules": ".*proj"}')
    sort_adapter_modules(regex)
    assert (regex / "adapter_config.json").read_text() == '{"target_modules": ".*proj"}'
    sort_adapter_modules(tmp_path / "missing")
