#!/usr/bin/env bash
# The GPU check, run by hand on a CUDA machine from the repository root:
#
#     bash benchmarks/gpu_check.sh            # figures on stdout and in $OUT (default /tmp/osad-gpu)
#
# 1. one OSDN PGD-5 training step at paper scale (ResNet-18 width 64, five
#    non-local blocks, latent 512, 32x32, batch 128) against the naive step,
#    in fp32 (with and without SDPA's fused kernels), then bf16 + channels_last +
#    compile;
# 2. `osad run` on the digits default through the CUDA path, fp32 and bf16;
# 3. the test suite with CUDA visible (device=auto resolves to the GPU).
# Each part has its own time limit so that one slow part cannot hide the others.
set -u
OUT=${OUT:-/tmp/osad-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log="$OUT/gpu_check.log"

part() {  # part SECONDS COMMAND...: run with a time limit, keep the whole output in the log
    local limit=$1
    shift
    echo "== $* (limit ${limit} s)" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    local status=$?
    echo "   exit ${status} after $((SECONDS - start)) s" | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"

step=(benchmarks/train_step.py --device cuda --batch 128 --repeats 5)
part 90 "$py" "${step[@]}"
part 90 "$py" "${step[@]}" --sdpa math
part 150 "$py" "${step[@]}" --bf16 --channels-last --compile

for precision in fp32 bf16; do
    flag=$([ "$precision" = bf16 ] && echo perf.bf16=true || echo perf.bf16=false)
    run="/tmp/osad-gpu-run-$precision"
    rm -rf "$run"
    part 90 "$py" -m osad run --no-progress --out "$run" device=cuda "$flag"
    cp "$run/eval/metrics.json" "$OUT/digits-$precision-metrics.json" 2>/dev/null
done

part 120 "$py" -m pytest -q -x -p no:cacheprovider -n 8
grep -E "^(device|FLOPs|ratio| +(naive|osad)|trained|\| |results in|[0-9]+ (passed|failed))|exit|==" "$log"
