#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md, in one go, on one CUDA GPU.
#
#   bash benchmarks/run_gpu.sh [OUT_DIR]      (default: benchmarks/results-gpu)
#
# Writes one .txt (the printed tables) and one .json per benchmark into OUT_DIR.
# Needs the package installed (pip install -e .) and a CUDA build of torch. Weights are
# random (speed does not depend on them), so nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results-gpu}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"

for b in dinov2-s14 dinov2-b14; do   # the issue's models for the step ratio
  python benchmarks/step_vs_reference.py --device cuda --backbone "$b" --batch 8 --repeats 5 | tee "$out/step_vs_reference-$b.txt"
done
for b in dinov2-s14 dinov2-b14 dinov2-l14; do   # components, FLOPs, MFU, projected paper cost
  python benchmarks/components.py --device cuda --backbone "$b" --batch 8 --repeats 10 --json "$out/components-$b.json" \
    | tee "$out/components-$b.txt"
done
python benchmarks/data_loading.py --workers 0 1 2 4 8 --components-json "$out/components-dinov2-b14.json" \
  --json "$out/data_loading.json" | tee "$out/data_loading.txt"
python benchmarks/tracker_throughput.py --device cuda --repeats 3 | tee "$out/trackers.txt"
python benchmarks/tracker_throughput.py --device cuda --repeats 2 --points 70000 \
  --tracker-kwargs max_points_per_chunk=8192 | tee "$out/trackers-70k.txt"
python benchmarks/memory_per_gpu.py --json "$out/memory.json" | tee "$out/memory.txt"
