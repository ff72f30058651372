#!/usr/bin/env bash
# Smoke test of the LoRA + trunk-cache + cached-reference + one-pass-evaluation path on an
# accelerator (ACC=gpu) before the study runs there; ACC=cpu runs the same on CPU.
#   ACC=gpu bash benchmarks/quality/gpu/smoke.sh
set -euo pipefail
ACC=${ACC:-gpu}
PY=${PY:-python3}
R=${SMOKE_DIR:-/tmp/sdpo_smoke}
rm -rf "$R"; mkdir -p "$R"
$PY -m sdpo_lightning.data.synthetic --config configs/quickstart_data.yaml --out "$R/data" --n-users 60 >/dev/null
common=(--trainer.accelerator "$ACC" --trainer.limit_val_batches 2 --trainer.limit_test_batches 2
        --trainer.enable_progress_bar false --model.source.tokenizer_path "$R/data/tokenizer"
        --data.train_file "$R/data/train.json" --data.val_file "$R/data/valid.json" --data.test_file "$R/data/test.json")
lora='{r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj, gate_proj], layers_to_transform: [1]}'
$PY -m sdpo_lightning fit -c configs/quickstart_sft.yaml "${common[@]}" --trainer.default_root_dir "$R/sft" \
  --trainer.max_steps 6 --model.lora "$lora" --model.scoring.trunk_cache true --model.eval.val_ranking true
$PY -m sdpo_lightning test -c configs/quickstart_sft.yaml "${common[@]}" --trainer.default_root_dir "$R/sft" \
  --model.lora "$lora" --model.source.init_adapter "$R/sft/export"
$PY -m sdpo_lightning fit -c configs/quickstart_sft.yaml "${common[@]}" --trainer.default_root_dir "$R/sdpo" \
  --trainer.max_steps 6 --model.source.init_adapter "$R/sft/export" --model.scoring.trunk_cache true --model.objective.name sdpo \
  --model.scoring.reference cached --model.scoring.mode shared_prefix --model.eval.val_ranking true
$PY -m sdpo_lightning test -c configs/quickstart_sft.yaml "${common[@]}" --trainer.default_root_dir "$R/sdpo" \
  --model.source.init_adapter "$R/sdpo/export" --model.objective.name sdpo
echo "SMOKE OK ($ACC)"
