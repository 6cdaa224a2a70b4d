#!/usr/bin/env bash
# Embedding throughput on a lent GPU machine: float32 against bfloat16, eager against compiled.
#
# Runs bench/embedding_throughput.py for the `lite` profile (real weights) and the
# `dinov2-gastronet` profile (random weights of the same architecture: the speed is the same),
# in float32 and bfloat16 autocast, eager and torch.compile, at two batch sizes. Every run
# writes JSON to $OUT (the device tool's output folder) or to ./out/gpu. Prepare first with
# scripts/gpu/prepare.sh; the whole script takes a few minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/../.."

if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
out=${OUT:-out/gpu}
mkdir -p "$out"
device=${DEVICE:-cuda}
images=${IMAGES:-.gpu-images}
count=${COUNT:-256}
rounds=${ROUNDS:-3}
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia-smi.csv" 2>&1 || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())' \
  | tee "$out/torch.txt"

run() {
  local name=$1; shift
  echo "== $name"
  timeout 300 python3 bench/embedding_throughput.py --images "$images" --count "$count" --rounds "$rounds" \
    --device "$device" --json "$out/$name.json" "$@" 2> "$out/$name.log" || echo "failed: $name (see $name.log)"
}

for batch in 32 128; do
  run "lite-fp32-b$batch" --profile lite --precision float32 --batch-size "$batch"
  run "lite-bf16-b$batch" --profile lite --precision bfloat16 --batch-size "$batch"
  run "dual-fp32-b$batch" --profile dinov2-gastronet --random-weights --precision float32 --batch-size "$batch"
  run "dual-bf16-b$batch" --profile dinov2-gastronet --random-weights --precision bfloat16 --batch-size "$batch"
done
run "lite-bf16-b128-compiled" --profile lite --precision bfloat16 --batch-size 128 --compile
run "dual-bf16-b128-compiled" --profile dinov2-gastronet --random-weights --precision bfloat16 --batch-size 128 --compile
