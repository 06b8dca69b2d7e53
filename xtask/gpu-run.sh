#!/bin/bash
# On a GPU machine without Rust (the `device` tool; carry `.gpu`, made by
# `cargo xtask gpu-pack`): unpack the cuda build of seqrec and its GPU test
# binaries, check the kernels against their CPU references, then run the
# GRU4Rec GPU benchmark of issue 7. Results land in $OUT (or /tmp/seqrec-gpu).
#
#   bash xtask/gpu-run.sh            # tests, then the benchmark
#   bash xtask/gpu-run.sh tests      # tests only
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/seqrec-gpu}
bin=/tmp/seqrec-gpu-bin
mkdir -p "$out" "$bin"
[ -f .gpu/seqrec.gz ] || { echo "no .gpu/seqrec.gz: run 'cargo xtask gpu-pack' where Rust is, and carry .gpu" >&2; exit 2; }
for f in .gpu/*.gz; do gunzip -c "$f" > "$bin/$(basename "$f" .gz)"; chmod +x "$bin/$(basename "$f" .gz)"; done
# candle links libcublas, libcublasLt, libcurand, libcudart, libnvrtc (CUDA 13): PyTorch's nvidia packages carry them.
libs=$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldd "$bin/seqrec" | grep -E "not found" && { echo "missing libraries (above); set LD_LIBRARY_PATH" >&2; exit 2; }
nvidia-smi | tee "$out/nvidia-smi.txt"
status=0
for t in "$bin"/gpu-*; do
  echo "== $(basename "$t")"
  "$t" --nocapture --test-threads 1 2>&1 | tee "$out/$(basename "$t").log" || status=1
done
if [ "$status" != 0 ] || grep -q "skipped" "$out"/gpu-*.log; then
  echo "GPU tests failed or were skipped: see $out/gpu-*.log; no benchmark" >&2
  exit 1
fi
[ "${1:-all}" = tests ] && exit 0
# ≥ 5M training events on 40,000 items (issue 7); the JSON records the count and the device.
"$bin/seqrec" --device cuda bench gru4rec --items 40000 --sessions 760000 --settings a-logq,b \
  --work /tmp/seqrec-gpu-work --json "$out" 2>&1 | tee "$out/bench.log"
