#!/usr/bin/env bash
# Every check that needs a GPU, as one script for a lent GPU machine (issues #21 and #24), run
# from the repository root with the project installed:
#   bash benchmarks/gpu_checks.sh [PHOTO_FOLDER]   (default ../shared/datasets/photos-train-v2)
# Prints each check's output under a heading; carries on past a failing one and exits non-zero
# if any failed. About 5 minutes on one H100.
set -u
PHOTOS="${1:-../shared/datasets/photos-train-v2}"
PY="${PYTHON:-python}"
WORK="$(mktemp -d)"
failed=0
check() { echo "=== $1"; shift; "$@" || { echo "=== FAILED (status $?)"; failed=1; }; }

check "gpu tests (#21)" "$PY" -m pytest -q -m gpu tests/test_device.py
check "encode/decode throughput and cross-device symbols (#21)" "$PY" benchmarks/gpu.py "$PHOTOS" --images 8
check "sd21 decoder latency, SD 2.1-base sizes, random weights, bf16 (#24)" \
  "$PY" benchmarks/sd21_latency.py --device cuda --dtype bf16 --size 512 --steps 4 --repeats 5
check "tiny sd21 components" "$PY" -c "import sys, pathlib; sys.path.insert(0, '.'); from tests.tiny_sd21 import make_tiny_sd21; make_tiny_sd21(pathlib.Path('$WORK/tiny'))"
mkdir -p "$WORK/photos"
check "training photos" "$PY" -c "import glob; from PIL import Image
for i, f in enumerate(sorted(glob.glob('$PHOTOS/*'))[:4]):
    im = Image.open(f).convert('RGB'); im.thumbnail((160, 160)); im.save('$WORK/photos/p%d.png' % i)"
check "sd21-codec on cuda, tiny (#24)" "$PY" -m pipelines.cli train sd21-codec --sd-model "$WORK/tiny/sd21" \
  --data "$WORK/photos" --storage-path "$WORK/runs" --device cuda --steps 8 --save-every 4 --batch 2 --crop 128 \
  --lr 1e-3 --codec-config '{"hidden": 16, "y_channels": 16, "z_channels": 8, "slices": [8, 8]}'
check "sd21-controlnet on cuda, tiny (#24)" "$PY" -m pipelines.cli train sd21-controlnet --sd-model "$WORK/tiny/sd21" \
  --latent-codec "$WORK/tiny/latent_codec.safetensors" --data "$WORK/photos" --storage-path "$WORK/runs" \
  --device cuda --steps 8 --save-every 4 --batch 2 --crop 128 --lr 1e-3 --size-ratio 0.25
rm -rf "$WORK"
exit $failed
