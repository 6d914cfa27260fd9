#!/usr/bin/env bash
# Paper-scale self-blended training, for the minutes a GPU is lent (docs/training.md, "Long self-blended training"):
# benchmarks/gpu_sbi.py's three steps. Here, before: `pack` the faces (about 50 MiB: with the
# repository under the 64 MiB that travel) and download pydantic's wheels (the one dependency of
# dfcl.data.sbi the device lacks) into .whl; on the device: this script; here, after: `score`.
#
#   bash benchmarks/gpu_sbi.sh --pack                       # here: gpu_pack/ and .whl/ (both git-excluded)
#   OUT=/path bash benchmarks/gpu_sbi.sh                    # on the GPU (carry gpu_pack and .whl), ~7 min on an H200
#   bash benchmarks/gpu_sbi.sh --smoke                      # here, CPU, toy size: pack, train, score (the tests run it)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/.work/gpu_sbi}
DATA=${DATA:-../shared/data}
PY=${PYTHON:-python}
mkdir -p "$OUT"
case "${1:-}" in
  --pack)
    "$PY" benchmarks/gpu_sbi.py pack --out gpu_pack --data "$DATA" -S data.max_per_class=300
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
      "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" \
      "pydantic_core==$("$PY" -c 'import pydantic_core; print(pydantic_core.__version__)')" \
      annotated-types typing-inspection ;;
  --smoke)
    W="$OUT/work"; SET=(-S data.image_size=32 -S data.max_per_class=3)
    "$PY" benchmarks/gpu_sbi.py pack --out "$OUT/pack" --data "$DATA" --workspace "$W" "${SET[@]}" \
      --sbi-cap 3 --unseen-cap 3 --lfw-train 6 --lfw-val 4
    "$PY" benchmarks/gpu_sbi.py train --pack "$OUT/pack" --out "$OUT" --tag smoke --minutes 0.2 --max-epochs 2 \
      --points 2 --batch 4 --workers 0
    "$PY" benchmarks/gpu_sbi.py score --weights "$OUT" --data "$DATA" --workspace "$W" "${SET[@]}" --unseen-cap 3 ;;
  *)
    if [ -d .whl ]; then  # the device: its Python has torch, timm, OpenCV, not pydantic
      python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    "${PY}" benchmarks/gpu_sbi.py train --pack gpu_pack --out "$OUT" --tag "${TAG:-h200}" \
      --minutes "${MINUTES:-5}" --workers "${WORKERS:-14}" ;;
esac
