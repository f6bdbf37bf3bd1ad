#!/usr/bin/env bash
# The GPU side of a training burst staged by infra/gpu_burst/stage.py (see its docstring).
# Run from the repository root with .gpu/ beside it; results go to $OUT (default runs/burst-out):
#   MINUTES=7 BATCH=32 EXTRA="--adversarial-weight 0.002" bash infra/gpu_burst/burst.sh
# EXTRA="--freeze-codec ..." trains the decoder alone: the export's latent codec is then the
# release's own file, byte for byte, and a release made from it adds only a 5 MB decoder.
# It fine-tunes the staged release (`train perceptual-codec --init-from`) for MINUTES of wall
# time, then writes the export for `stage.py collect`: the decoder, the latent codec in parts
# of at most 15 MiB (the device tool returns files of 16 MiB at most), the log, the config and
# SHA256SUMS. The photos were staged small (512 px), so they are used at their own scale
# (SCALES). DEVICE=cpu runs the same steps without a GPU (the test does).
# TRAINER=cdm trains a CDM for the staged release instead (`train cdm-perceptual --model`): the
# export is cdm/ (config.json, model.safetensors), for `decoder_compare.py --cdm NAME=FOLDER/cdm`.
set -euo pipefail
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/burst-out}"
RUN="${RUN:-$(mktemp -d)}"
mkdir -p "$OUT"
[ -f .gpu/STAGED.json ] || { echo "no .gpu/STAGED.json: run infra/gpu_burst/stage.py stage first" >&2; exit 2; }
MODEL_ID="$("$PY" -c 'import json; print(json.load(open(".gpu/STAGED.json"))["model_id"])')"
LONG_SIDE="$("$PY" -c 'import json; print(json.load(open(".gpu/STAGED.json"))["long_side"])')"
if ! "$PY" -c "import compressai, pytorch_msssim" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi -L
COMMON=(--data .gpu/photos --max-side "$LONG_SIDE" --device "${DEVICE:-cuda}" --batch "${BATCH:-32}"
        --minutes "${MINUTES:-7}" --save-every "${SAVE_EVERY:-1000000}" --log-every "${LOG_EVERY:-25}"
        --weights-dir .gpu/taef2 --metric-weights .gpu/metrics --out "$RUN")
if [ "${TRAINER:-codec}" = cdm ]; then  # a CDM for the staged release (8.5 MB: no parts)
  # shellcheck disable=SC2086  # SCALES and EXTRA are lists of arguments
  "$PY" -m training.cdm_perceptual "${COMMON[@]}" --scales ${SCALES:-1.0} --model "$MODEL_ID" ${EXTRA:-} \
    2>&1 | tee "$OUT/stdout.log"
  mkdir -p "$OUT/cdm"
  cp "$RUN/cdm/config.json" "$RUN/cdm/model.safetensors" "$OUT/cdm/"
  cp "$RUN/args.json" "$OUT/"
  (cd "$RUN" && sha256sum cdm/config.json cdm/model.safetensors args.json) > "$OUT/SHA256SUMS"
else
  # shellcheck disable=SC2086
  "$PY" -m training.perceptual_codec "${COMMON[@]}" --scales ${SCALES:-1.0} --init-from "$MODEL_ID" ${EXTRA:-} \
    2>&1 | tee "$OUT/stdout.log"
  cp "$RUN/decoder.safetensors" "$RUN/config.json" "$OUT/"
  split -b 15M -d "$RUN/latent_codec.safetensors" "$OUT/latent_codec.safetensors.part-"
  (cd "$RUN" && sha256sum latent_codec.safetensors decoder.safetensors config.json) > "$OUT/SHA256SUMS"
fi
cp "$RUN/train.log" "$OUT/train_log.jsonl"
tail -n 3 "$OUT/train_log.jsonl"
ls -l "$OUT"
