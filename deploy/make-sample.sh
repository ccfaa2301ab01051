#!/usr/bin/env bash
# Rebuild the shipped sample/ from the source data (not needed to run the demo):
#   bash deploy/make-sample.sh [DATA_DIR]      (default ../shared/data)
# DATA_DIR holds grocery/ (the Grocery Store dataset, MIT) and kiosk-clips/.
#  1. sample/catalogue, sample/LICENSE, sample/clip.mp4, sample/clip.csv:
#     deterministic (deploy/make_sample.py: fixed products, photos, cut points).
#  2. sample/bundle: trained, exported and indexed with the trainer. Training
#     is seeded and runs a fixed number of epochs; the bytes can still differ
#     between machines and thread counts (floating-point order), the accuracy not much.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data}"
RUN="${SAMPLE_RUN:-runs/sample}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY="$(command -v python3 || command -v python)"

"$PY" -m deploy.make_sample --data "$DATA" --out sample

rm -rf "$RUN" sample/bundle
# A narrow encoder (width 16) keeps the shipped bundle small (about 2 MB of ONNX).
# --size 64 and --cutmix 0 are the defaults the shipped bundle was built with.
trainer fit sample/catalogue --out "$RUN" --size 64 --width 16 --cutmix 0 --epochs 150 --seed 0 --no-progress
trainer export "$RUN" --out sample/bundle --weights last
trainer index sample/bundle sample/catalogue --probes 10 --no-progress
du -sh --apparent-size sample/* && du -sh --apparent-size sample
