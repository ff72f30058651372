#!/usr/bin/env bash
# Train + test GRU4Rec, Caser, SASRec: LastFM (valid.json) x 3 seeds, MovieLens-100K (valid.json).
# Usage (repo root): bash benchmarks/quality/results/baselines/run_seqrec.sh [ML100K_DIR] [ML_SEEDS]
# ML100K_DIR: output of `sdpo-prepare movielens-100k --raw ../shared/data/ml-100k --out DIR`.
set -euo pipefail
ML=${1:-data/ml-100k}
ML_SEEDS=${2:-"0"}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
PY=${PY:-.venv/bin/python}
OUT=benchmarks/quality/results/baselines
ONLY=${ONLY:-all}  # lastfm | ml100k | all
[ "$ONLY" = ml100k ] || for seed in 0 1 2; do
  for m in gru4rec caser sasrec; do
    d=$OUT/${m}_lastfm/seed$seed
    [ -f $d/summary.json ] && continue
    $PY -m sdpo_lightning.baselines fit -c configs/baselines/${m}_lastfm.yaml \
      --seed_everything $seed --trainer.default_root_dir runs/baselines/${m}_lastfm/seed$seed \
      --trainer.logger.init_args.save_dir runs/baselines/${m}_lastfm/seed$seed \
      --model.init_args.report_dir $d 2>&1 | grep -E "HR@1|Error|error" || true
    cp runs/baselines/${m}_lastfm/seed$seed/csv/version_*/metrics.csv $d/ 2>/dev/null || true
    if [ -f $d/predictions.jsonl ]; then  # committed compact: predictions.jsonl.gz (../README.md)
      $PY -m sdpo_lightning.evaluation.compact_predictions compact $d/predictions.jsonl >/dev/null
    fi
  done
done
[ "$ONLY" = lastfm ] || for seed in $ML_SEEDS; do
  for m in gru4rec caser sasrec; do
    d=$OUT/${m}_ml100k/seed$seed
    [ -f $d/summary.json ] && continue
    $PY -m sdpo_lightning.baselines fit -c configs/baselines/${m}_ml100k.yaml \
      --seed_everything $seed --data.train_file $ML/train.json --data.test_file $ML/valid.json \
      --trainer.default_root_dir runs/baselines/${m}_ml100k/seed$seed \
      --trainer.logger.init_args.save_dir runs/baselines/${m}_ml100k/seed$seed \
      --model.init_args.report_dir $d 2>&1 | grep -E "HR@1|Error|error" || true
    cp runs/baselines/${m}_ml100k/seed$seed/csv/version_*/metrics.csv $d/ 2>/dev/null || true
  done
done
