#!/usr/bin/env bash
# The four-variant comparison in README ("30 prompts per language"): the SSI and adapters of an
# existing `lasa run` (default runs/quick, what `make run` writes), evaluated on 30 MultiJail
# prompts per language with 128 new tokens, into a copy of the run so the original stays as it is.
# Usage: scripts/compare_variants.sh [SRC_RUN] [DST_RUN] [MODEL]   (~37 min on 2 CPU cores)
set -euo pipefail
src=${1:-runs/quick}
dst=${2:-runs/quick_cmp}
model=${3:-default}   # the model SRC_RUN was made with (its SSI refuses any other)
for d in locate ssi align; do
  [ -d "$src/$d" ] || { echo "compare_variants: $src/$d not found; run \`make run\` (or lasa run --run-dir $src) first" >&2; exit 2; }
done
rm -rf "$dst" && mkdir -p "$dst/eval"
cp -r "$src/locate" "$src/ssi" "$src/align" "$src/config.yaml" "$dst/"
variants=${VARIANTS:-"base base+gate kto lasa+gate"}   # names from lasa.config.VARIANTS
for v in $variants; do
  lasa evaluate --model "$model" --run-dir "$dst" --variant "$v" \
    --n 30 --no-xstest --utility none --batch-size 32 --max-new-tokens 128
done
lasa report --run-dir "$dst"
