#!/usr/bin/env bash
# The six-variant comparison of README's main tables for any model, from nothing: the quick preset's
# stages (locate, interpret, align lasa / kto / sft) into RUN, then base, base+gate, lasa, lasa+gate,
# kto and sft on N MultiJail prompts per language (scripts/compare_variants.sh, in place). Every step
# resumes: rerun the same command after an interruption and finished stages are skipped, finished
# completions reused (lasa evaluate resumes per sample).
# Usage: [N=100] [TOKENS=64] [XSTEST_N=50] scripts/six_variants.sh [MODEL] [RUN]
#   The 1.5B's table (docs/results.md, "The 1.5B"): scripts/six_variants.sh qwen2.5-coder-1.5b runs/q15
#   On 2 CPU cores that is about 45 min of stages and 40-90 min per ungated variant; on a GPU, minutes.
set -euo pipefail
model=${1:-default}
run=${2:-runs/six_${model//[^A-Za-z0-9._-]/_}}
preset=configs/quick.yaml
# a finished stage is kept as it is (a rerun would retrain the SSI, and the gated variants' answers
# are keyed by its weights); delete its folder to redo it
[ -f "$run/locate/bottleneck.json" ] || lasa locate --config "$preset" --model "$model" --run-dir "$run"
[ -f "$run/ssi/metrics.json" ] || lasa interpret --config "$preset" --model "$model" --run-dir "$run"
for method in lasa kto sft; do
  if [ ! -f "$run/align/$method/summary.json" ]; then
    lasa align --config "$preset" --model "$model" --run-dir "$run" --method "$method"
  fi
done
N=${N:-100} TOKENS=${TOKENS:-64} XSTEST_N=${XSTEST_N:-50} \
  VARIANTS="base base+gate lasa lasa+gate kto sft" \
  "$(dirname "$0")/compare_variants.sh" "$run" "$run" "$model"
