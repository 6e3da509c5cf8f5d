#!/usr/bin/env bash
# The GPU check: everything that needs CUDA, in one run of about 10 minutes, all outputs in one folder.
#
#   bash scripts/gpu_check.sh [--dry] [OUT_DIR]
#
# On a machine with a GPU (and the CUDA build of torch; faiss-gpu for the GPU indexes, docs/gpu-and-distributed.md) it runs
#   1. the CUDA and faiss-gpu tests (tests/test_cuda.py and the index contract's GPU cases),
#   2. `sab-mips bench step` on CUDA: SAB against the fused cuDNN LSTM at T = 1000 and 3000,
#   3. `sab-mips bench retrieval` on CUDA (exact and faiss-gpu indexes),
#   4. `sab-mips bench long` on CUDA at T = 10^4 and 10^5 (the memory-bounded engine),
#   5. a short copy training on CUDA (2 minutes),
# and writes summary.txt (one line per step: ok, failed, or skipped with the reason) beside each step's log.
# Without a GPU, or with --dry, every CUDA step is reported as skipped with its reason and the script still
# succeeds: the tests run it that way, so the script itself is tested on machines without a GPU.
set -uo pipefail

DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
OUT=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

reason=$("$PY" -c "import torch; print('' if torch.cuda.is_available() else 'no CUDA device visible (torch ' + torch.__version__ + ')')" 2>/dev/null) \
  || reason="$PY cannot import torch (run 'make test' first, or set PYTHON)"
if [ "$DRY" = 1 ]; then reason="dry run (--dry)${reason:+; $reason}"; fi

step() {  # step NAME COMMAND...: run it (log in OUT/NAME.log) or record why it was skipped
  local name=$1; shift
  if [ -n "$reason" ]; then
    echo "$name: skipped: $reason" | tee -a "$SUMMARY"
    return 0
  fi
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then
    echo "$name: ok ($((SECONDS - start)) s)" | tee -a "$SUMMARY"
  else
    echo "$name: FAILED (exit $?, see $name.log)" | tee -a "$SUMMARY"
  fi
}

"$PY" -m sab_mips info > "$OUT/info.txt" 2>&1 && echo "info: ok" | tee -a "$SUMMARY"
step tests "$PY" -m pytest -q -rs tests/test_cuda.py tests/test_indexes_contract.py -k "cuda or gpu or test_cuda"
step bench-step "$PY" -m sab_mips bench step --device cuda --T 1000 3000 --models lstm sab --rounds 3 \
  --out "$OUT/step.json"
step bench-retrieval "$PY" -m sab_mips bench retrieval --device cuda --sizes 1000,10000,100000 --datasets gaussian \
  --indexes faiss-gpu:Flat "faiss-gpu:IVF256,nprobe=16" --pattern-indexes faiss-gpu:Flat --out "$OUT/retrieval"
step bench-long "$PY" -m sab_mips bench long --device cuda --T 10000 100000 --models lstm sab-engine sab-mips \
  --approx "faiss-gpu:IVF256,nprobe=16" --max-minutes 3 --out "$OUT/long.json"
step train-copy "$PY" -m sab_mips train --device cuda --task copy --T 100 --batch-size 64 --steps 100000 \
  --time-budget 120 --eval-every 200 --no-progress --run-dir "$OUT/copy100"
echo "wrote $SUMMARY"
