#!/usr/bin/env bash
# Paper-scale self-blended training, for the minutes a GPU is lent (the device tool, DEVELOPERS.md):
# EfficientNet-Lite2 at 224 px, the self-blended experience of FF++'s and LFW's real faces for
# about 100 reference epochs' worth of blends (100 x 8 frames x 720 videos = 576k; here
# ~2,300 pairs x 2 faces x EPOCHS), then the FF++ sequence, every set scored as
# benchmarks/generalization.py does. Results (md, json, png) and both models' weights (float16
# safetensors: the self-blended model alone, and after FF++) land in $OUT.
#
#   OUT=/path DATA=../shared/data bash benchmarks/gpu_sbi.sh            # on the GPU, ~8 min on an H200
#   bash benchmarks/gpu_sbi.sh --smoke                                  # CPU, a toy size (the tests run it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/.work/gpu_sbi}
DATA=${DATA:-../shared/data}
PY=${PYTHON:-python}
mkdir -p "$OUT"
if [ "${1:-}" = "--smoke" ]; then
  TAG=smoke; SBI_CAP=3; REALS=lfw-faces:8; UNSEEN=3
  SET=(-S model.name=small_cnn -S model.pretrained=none -S data.image_size=32 -S data.max_per_class=3
       -S sbi.epochs=1 -S train.epochs=1 -S train.device=cpu)
else
  TAG=gpu; SBI_CAP=0; REALS=lfw-faces:4000; UNSEEN=200
  SET=(-S model.name=efficientnet_lite2 -S data.image_size=224 -S sbi.epochs="${EPOCHS:-120}" -S train.epochs=3
       -S train.batch_size=128 -S train.eval_batch_size=512 -S train.lr=0.002 -S train.device=cuda
       -S train.num_workers=14 -S faces.device=cuda -S faces.batch_size=64 -S train.early_stopping_patience=10)
fi
"$PY" benchmarks/generalization.py --rows sbi_first --tag "$TAG" --data "$DATA" --workspace "$OUT/work" --out "$OUT" \
  --sbi-reals "$REALS" --sbi-cap "$SBI_CAP" --unseen-cap "$UNSEEN" -S train.eval_upcoming=false "${SET[@]}"
# The weights, small enough to come back from the device machine (16 MiB a file).
"$PY" - "$OUT" <<'PY'
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

out = Path(sys.argv[1])
for name in ("sbi_first", "sbi_first-sbi-alone"):
    state = out / "work" / "learners" / name
    current = state / (state / "CURRENT").read_text().strip() / "model.safetensors"
    save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(current).items()},
              out / f"{name}.fp16.safetensors")
    print(f"{out / f'{name}.fp16.safetensors'}")
PY
