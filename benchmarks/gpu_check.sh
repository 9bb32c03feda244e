#!/usr/bin/env bash
# The GPU checks of issue 21, as ONE prepared run (about 9 minutes at most on an H200): the CUDA tests, the real-size
# speech-generation benchmark eager and compiled (CUDA graphs), code2wav and audio-tokenizer benchmarks at real size,
# and the real-size VRAM / quantised / offloaded loads. Not a test.
#
#   benchmarks/gpu_check.sh [STAGE ...]      stages: env tests eager compiled code2wav tokenizer big (default: these),
#                                            code2wav_compiled (only when named)
#
# Every stage has its own time limit and the whole run a budget (GPU_CHECK_BUDGET_S, default 540 s): a stage gets
# what is left, at most its limit, and is skipped when less than 20 s is left. Logs go to $OUT (default
# ./gpu_check_out): summary.txt (one line per stage: rc, seconds, the stage's last output line = its JSON figures)
# and one log per stage (7 files at most).
#
# Python packages: the machine's python3 is used (PYTHON=... to change it). Wheels found in ./.whl are installed to
# /tmp/site first (no network needed there). Prepare them on a machine with pip (the H200 image, read 2026-11, has
# torch 2.11 and transformers 5.17, below this package's floors, and no bitsandbytes), ignore the folder, carry it:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl transformers==5.24.0 bitsandbytes==0.50.2      # 57 MB together (the carry limit is 64 MiB)
#
# torch itself cannot travel (the CUDA wheel is GBs): the checks run on the image's torch, whatever its version.
#
# and run it as:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -u
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-540}"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env tests eager compiled code2wav tokenizer big)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/env.log" 2>&1 || echo "wheel install failed (see env.log)" >>"$SUMMARY"
    export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi

stage() {  # stage NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped (budget spent)" | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0
    t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" >>"$OUT/$name.log" 2>&1
    local rc=$?
    local last
    last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-4000)
    echo "$name: rc=$rc ($(($(date +%s) - t0)) s of $limit) $last" | tee -a "$SUMMARY"
}

for s in "${STAGES[@]}"; do
    case "$s" in
    env)
        stage env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
            $PY -c 'import sys, torch, transformers, accelerate; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name()); \
print(\"transformers\", transformers.__version__, \"accelerate\", accelerate.__version__); \
import importlib.util as u; print({m: bool(u.find_spec(m)) for m in (\"bitsandbytes\", \"flash_attn\", \"kernels\", \"soundfile\")}); \
import transformers_baichuan_audio; print(\"package imports\")'"
        ;;
    tests)  # the CUDA variants: offload to cpu / disk executing on GPU 0, 4-bit / 8-bit loads (bitsandbytes)
        stage tests 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_big_model_loading.py
        ;;
    eager)  # targets at real size, bf16: >= 100 audio frames/s, first audio <= 400 ms, <= 22 GB
        stage eager 100 "$PY" benchmarks/bench_generation.py --size real --dtype bf16 --device cuda --frames 150
        ;;
    compiled)  # CompileConfig() = CUDA graphs, static cache; includes the eager baseline and the compilation
        stage compiled 200 "$PY" benchmarks/bench_generation.py --size real --dtype bf16 --device cuda --frames 150 \
            --compile
        ;;
    code2wav)
        stage code2wav 45 "$PY" benchmarks/bench_code2wav.py --device cuda --size real
        ;;
    code2wav_compiled)  # not in the default list: compile_estimator() (inductor, dynamic shapes) against exact / bf16
        stage code2wav_compiled 120 "$PY" benchmarks/bench_code2wav.py --device cuda --size real --seconds 3.2 \
            --no-stream --paths exact bf16 compiled
        ;;
    tokenizer)
        stage tokenizer 45 "$PY" benchmarks/bench_audio_tokenizer.py --device cuda --size real --dtype bfloat16
        ;;
    big)  # VRAM: bf16 <= 22 GB, 4-bit <= 12 GB; offload to a 12 GiB GPU budget
        stage big 150 "$PY" benchmarks/bench_big_model.py --modes bf16 4bit offload --frames 50
        ;;
    *)
        echo "$s: unknown stage (env tests eager compiled code2wav code2wav_compiled tokenizer big)" | tee -a "$SUMMARY"
        ;;
    esac
done
echo "total $(($(date +%s) - START)) s" | tee -a "$SUMMARY"
