#!/usr/bin/env bash
# A variant comparison on more prompts than the run that trained them: the SSI and adapters of an
# existing run (default runs/quick, what `make run` writes), evaluated on N MultiJail prompts per
# language into a copy of the run, so the original stays as it is. Resumable: rerun the same
# command and finished completions are reused (lasa evaluate resumes per sample).
# Usage: [N=30] [TOKENS=128] [XSTEST_N=0] [VARIANTS="base base+gate kto lasa+gate"] \
#        scripts/compare_variants.sh [SRC_RUN] [DST_RUN] [MODEL]
#   N=30, 128 tokens, four variants: ~37 min on 2 CPU cores.
#   The 100-prompt comparison of docs/results.md, Stage 3 (adapters of scripts/dose_response.py's run):
#   N=100 TOKENS=64 XSTEST_N=100 VARIANTS="base base+gate lasa lasa+gate kto sft" \
#     scripts/compare_variants.sh runs/dose2 runs/c100
set -euo pipefail
src=${1:-runs/quick}
dst=${2:-runs/quick_cmp}
model=${3:-default}   # the model SRC_RUN was made with (its SSI refuses any other)
n=${N:-30}
tokens=${TOKENS:-128}
xstest_n=${XSTEST_N:-0}
for d in locate ssi align; do
  [ -d "$src/$d" ] || { echo "compare_variants: $src/$d not found; run \`make run\` (or lasa run --run-dir $src) first" >&2; exit 2; }
done
mkdir -p "$dst/eval"
for d in locate ssi align config.yaml; do
  [ -e "$dst/$d" ] || cp -r "$src/$d" "$dst/"
done
if [ "$xstest_n" = 0 ]; then xstest=(--no-xstest); else xstest=(--xstest-n "$xstest_n"); fi
variants=${VARIANTS:-"base base+gate kto lasa+gate"}   # names from lasa.config.VARIANTS
for v in $variants; do
  lasa evaluate --model "$model" --run-dir "$dst" --variant "$v" \
    --n "$n" "${xstest[@]}" --utility none --batch-size 32 --max-new-tokens "$tokens" \
    --judges pair lexicon --default-judge pair
done
lasa report --run-dir "$dst"
