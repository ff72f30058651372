#!/usr/bin/env bash
# The LastFM study's alignment sweep on one GPU, every run a separate process in parallel
# (a 135M model leaves a GPU mostly idle): the 8 alignment runs of lastfm_study.py from the
# CPU-trained SFT adapter, a GPU re-test of that adapter (device cross-check), and a 6-epoch
# SFT followed by its own alignment runs and the SWITCH runs (S-DPO for its last epochs), and
# the LLaRA rows (hybrid item prompts, llara_study.py).
# Results land under benchmarks/quality/results/ as on CPU; $OUT (if set) gets tarballs of the results, logs and adapters every 20 s.
#
# Needs: ../shared as on CPU; $STUDY (default /tmp/sdpo_study) seeded with the CPU study's
# runs/sft/export and done/fit_sft (the split is rebuilt from the same seed).
#   STUDY=/tmp/sdpo_study DEADLINE=540 bash benchmarks/quality/gpu/study.sh
set -uo pipefail
STUDY=${STUDY:-/tmp/sdpo_study}
PY=${PY:-python3}
DEADLINE=${DEADLINE:-540}
export OMP_NUM_THREADS=1
T0=$(date +%s)
run() { $PY benchmarks/quality/lastfm_study.py --out "$STUDY" --private-cache \
          --stage-args "--trainer.accelerator gpu" "$@"; }
mkdir -p "$STUDY/drv"
pids=()
run --only sft > "$STUDY/drv/sft_check.log" 2>&1 & pids+=($!)
for n in sft_cont sdpo_k3 dpo dpo_k3 sdpo_k8 sdpo_k3_b0.5 sdpo_k3_b2 sdpo_k3_lr5e-4; do
  run --only "$n" > "$STUDY/drv/$n.log" 2>&1 & pids+=($!)
done
( run --only sft_e6 > "$STUDY/drv/sft_e6.log" 2>&1 || exit 1
  for n in sft_cont sdpo_k3 sdpo_k8 dpo_k3 sdpo_k3_lr5e-4; do
    run --base sft_e6 --only "sft_e6.$n" > "$STUDY/drv/sft_e6.$n.log" 2>&1 &
  done
  # SWITCH: epochs 4-6 of that SFT run resumed with S-DPO (its epoch checkpoints are kept)
  run --only sft_e6_ep3 > "$STUDY/drv/sft_e6_ep3.log" 2>&1  # exports epoch 3 first: the others need it
  for n in sft_e6.sdpo_k3_ep4 sft_e6.sdpo_k3_nll_ep4 sft_e6.sdpo_k19_ep4 sft_e6.sdpo_k19_nll_ep4; do
    run --only "$n" > "$STUDY/drv/$n.log" 2>&1 &
  done; wait ) & pids+=($!)
# LLaRA (llara_study.py): SASRec item table, hybrid SFT (no trunk cache: the slow stage on CPU), S-DPO
$PY benchmarks/quality/llara_study.py --out "$STUDY" --stage-args "--trainer.accelerator gpu" \
  > "$STUDY/drv/llara.log" 2>&1 & pids+=($!)

pack() {
  [ -n "${OUT:-}" ] || return 0
  tar czf "$OUT/results.tgz.tmp" --exclude='baselines' benchmarks/quality/results 2>/dev/null && mv "$OUT/results.tgz.tmp" "$OUT/results.tgz"
  tar czf "$OUT/logs.tgz.tmp" -C "$STUDY" drv logs timings.json done 2>/dev/null; mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
  local i=0 group=() g=1
  for d in "$STUDY"/runs/*/export; do
    [ -f "$d/export_complete.json" ] || continue
    group+=("runs/$(basename "$(dirname "$d")")/export")
    if [ ${#group[@]} -eq 3 ]; then
      tar cf "$OUT/adapters$g.tar" -C "$STUDY" --exclude='tokenizer*' --exclude='*.jinja' "${group[@]}"; group=(); g=$((g+1))
    fi
  done
  [ ${#group[@]} -gt 0 ] && tar cf "$OUT/adapters$g.tar" -C "$STUDY" --exclude='tokenizer*' --exclude='*.jinja' "${group[@]}"
  return 0
}
while :; do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ $alive -eq 0 ] && break
  [ $(( $(date +%s) - T0 )) -ge "$DEADLINE" ] && { echo "deadline: stopping what still runs"; pkill -P $$; pkill -f lastfm_study.py; pkill -f llara_study.py; pkill -f "sdpo_lightning"; break; }
  pack; sleep 20
done
sleep 2; pack
echo "elapsed $(( $(date +%s) - T0 )) s"; ls "$STUDY/done"; nvidia-smi --query-gpu=memory.used --format=csv 2>/dev/null || true
