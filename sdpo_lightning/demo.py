"""The embedded default (``make demo``): synthetic data → tiny LLaMA → SFT → S-DPO → test.

No network: the catalogue, users and interaction sequences are generated from a seed, the
tokenizer is trained offline on the catalogue, and the model is a tiny LLaMA built from a
config. Stages run through the same ``sdpo`` CLI and YAML configs a user would run:

1. ``python -m sdpo_lightning.data.synthetic --out runs/quickstart/data``
2. ``sdpo fit  -c configs/quickstart_sft.yaml``   (full fine-tuning; exports the model)
3. ``sdpo test -c configs/quickstart_sft.yaml --model.model_name_or_path runs/quickstart/sft/export``
4. ``sdpo fit  -c configs/quickstart_sdpo.yaml``  (LoRA on the SFT model; reference = SFT)
5. ``sdpo test -c configs/quickstart_sdpo.yaml --model.init_adapter runs/quickstart/sdpo/export``

and prints HR@1 / ValidRatio of both stages side by side. Each test writes ``summary.json`` and
``predictions.jsonl`` into its stage's run directory; ``sdpo-plots runs/quickstart --out
runs/quickstart/figures`` draws the reward curves.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sdpo_lightning.cli import cli_main
from sdpo_lightning.data.synthetic import main as make_synthetic


def _stage(title: str, args: list[str]) -> float:
    print(f"\n=== {title}: sdpo {' '.join(args)}", flush=True)
    start = time.perf_counter()
    cli_main(args)
    return time.perf_counter() - start


def run(root: str = "runs/quickstart", configs: str = "configs", extra: list[str] | None = None) -> dict:
    """Run the whole demo; returns ``{stage: summary}``."""
    rootp, extra = Path(root), list(extra or [])
    sft_cfg, sdpo_cfg = f"{configs}/quickstart_sft.yaml", f"{configs}/quickstart_sdpo.yaml"
    times = {}
    if not (rootp / "data" / "tokenizer" / "tokenizer.json").is_file():
        make_synthetic(["--out", str(rootp / "data"), "--seed", "0"])
    times["sft fit"] = _stage("SFT", ["fit", "-c", sft_cfg, *extra])
    times["sft test"] = _stage(
        "test SFT", ["test", "-c", sft_cfg, "--model.model_name_or_path", f"{root}/sft/export",
                     "--model.method", "SFT", "--trainer.default_root_dir", f"{root}/sft", *extra])
    times["sdpo fit"] = _stage("S-DPO", ["fit", "-c", sdpo_cfg, *extra])
    times["sdpo test"] = _stage(
        "test S-DPO", ["test", "-c", sdpo_cfg, "--model.init_adapter", f"{root}/sdpo/export",
                       "--model.method", "S-DPO", "--trainer.default_root_dir", f"{root}/sdpo", *extra])
    summaries = {
        "SFT": json.loads((rootp / "sft" / "summary.json").read_text()),
        "S-DPO": json.loads((rootp / "sdpo" / "summary.json").read_text()),
    }
    print("\n=== Quick start results (synthetic test split)")
    print(f"{'stage':8} {'HR@1':>8} {'ValidRatio':>11} {'rank HR@1':>10} {'MRR':>7}")
    for name, s in summaries.items():
        g, r = s["protocols"].get("generation", {}), s["protocols"].get("ranking", {})
        val = lambda d, k: d.get(k, {}).get("value")  # noqa: E731
        cells = [val(g, "hr@1"), val(g, "valid_ratio"), val(r, "hr@1"), val(r, "mrr")]
        print(f"{name:8} " + " ".join(f"{c:>{w}.4f}" if c is not None else f"{'-':>{w}}"
                                      for c, w in zip(cells, (8, 11, 10, 7))))
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="configs", help="directory of the quickstart YAML files")
    args, extra = parser.parse_known_args(argv)
    run("runs/quickstart", args.configs, extra)  # the quickstart configs read runs/quickstart/data
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
