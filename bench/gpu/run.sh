#!/bin/bash
# bench/gpu/run.sh: issue 16's checks on a machine with an NVIDIA GPU and no Swift toolchain
# (the H200 box: python3 with a CUDA torch, g++; no network). Prepare here first:
#
#   bench/gpu/bundle.sh                      # our decoder + libjpeg-turbo/libpng/libwebp/zlib as one
#                                            # static archive (the GPU box has no -dev packages)
#   then, on the GPU machine, from the repository root (data/samples/bench carried along):
#   bash bench/gpu/run.sh                    # builds there with g++ against its own libtorch, runs,
#                                            # writes bench/gpu/out/gpu_bench.json and a table
#
# Runs in a few minutes: the shim's error paths (incl. CUDA out of memory and recovery), model
# only at batch 32 and 256 in fp32/bf16/fp16 against PyTorch on the same file, GPU vs CPU vectors
# of the same images (centered cosine, 10-NN overlap), and end to end from JPEG files (our decoder
# on DECODE_THREADS threads feeding the model) against a PyTorch DataLoader with 16 PIL workers.
# DEVICE=cpu runs the same on a CPU (how it is tested without a GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/bench/gpu/out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda:0}
IMAGES=${IMAGES:-$ROOT/data/samples/bench}
E2E_IMAGES=${E2E_IMAGES:-4096}
ITERS=${ITERS:-20}
THREADS=${THREADS:-$(nproc)}
DECODE_THREADS=${DECODE_THREADS:-$((THREADS > 2 ? THREADS - 2 : 1))}
BATCHES=${BATCHES:-"32 256"}
PRECISIONS=${PRECISIONS:-"fp32 bf16 fp16"}
mkdir -p "$OUT"
log() { echo "[gpu] $*" >&2; }

# libtorch: the machine's torch wheel (torch/include, torch/lib) unless given.
TORCH_DIR=$($PY -c 'import os, torch; print(os.path.dirname(torch.__file__))')
TORCH_INCLUDE=${TORCH_INCLUDE:-$TORCH_DIR/include}
TORCH_LIB=${TORCH_LIB:-$TORCH_DIR/lib}
ABI=$($PY -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
CUDA_LIBS=""
[ -e "$TORCH_LIB/libtorch_cuda.so" ] && CUDA_LIBS="-Wl,--no-as-needed -ltorch_cuda -Wl,--as-needed"
log "libtorch $($PY -c 'import torch; print(torch.__version__)') at $TORCH_LIB (C++11 ABI $ABI) ${CUDA_LIBS:+with CUDA}"

# The same two halves as the Swift build (README, "Bring your own libtorch"): the torch backend
# libewall_torch.so (the only thing linked against libtorch) and the harness with the loader,
# which finds the backend beside itself at run time.
BUILD=$OUT/build
mkdir -p "$BUILD"
BUNDLE=${BUNDLE:-$ROOT/bench/gpu/bundle/ew_image_bundle.a}
[ -e "$BUNDLE" ] || { log "no $BUNDLE: run bench/gpu/bundle.sh where the -dev packages are"; exit 2; }
t0=$(date +%s)
g++ -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -D_GLIBCXX_USE_CXX11_ABI=$ABI -ISources/CTorchLoader/include \
    -I"$TORCH_INCLUDE" -I"$TORCH_INCLUDE/torch/csrc/api/include" \
    Sources/CTorchShim/torch_shim.cpp -o "$BUILD/libewall_torch.so" -Wl,-z,defs -L"$TORCH_LIB" \
    -Wl,-rpath,"$TORCH_LIB" $CUDA_LIBS -ltorch_cpu -lc10
gcc -O2 -ISources/CTorchLoader/include -ISources/CImageCodec/include \
    -c Sources/CTorchLoader/loader.c -o "$BUILD/loader.o"
gcc -O2 -ISources/CTorchLoader/include -ISources/CImageCodec/include -c bench/gpu/harness.c -o "$BUILD/harness.o"
g++ -no-pie -o "$BUILD/harness" "$BUILD/harness.o" "$BUILD/loader.o" "$BUNDLE" -ldl -lpthread -lm
log "built the torch backend and the harness in $(( $(date +%s) - t0 )) s"
H=$BUILD/harness

MODEL=${MODEL:-$OUT/resnet50.pt}
if [ ! -e "$MODEL" ]; then
    log "exporting the seeded random-init ResNet50 with models/export_resnet50.py (same script as make model)"
    $PY models/export_resnet50.py --out "$MODEL" --random-init --seed 0 \
        $( [ -d data/samples/calibration ] && echo --calibration-dir data/samples/calibration ) >&2
fi

ls "$IMAGES"/*.jpg | head -256 > "$OUT/images.txt"
export EW_THREADS=$THREADS
{
    log "error paths"
    $H errors "$MODEL" | sed 's/^/{"kind": "error_path", "r": /; s/$/}/'
    for p in $PRECISIONS; do
        for b in $BATCHES; do
            log "model only: ours, $DEVICE $p batch $b"
            $H model "$MODEL" "$DEVICE" "$p" "$b" "$ITERS" | sed 's/^/{"kind": "model_ours", "r": /; s/$/}/' || true
        done
    done
    for p in fp32 bf16; do
        log "vectors of the same images: $DEVICE $p and cpu fp32"
        $H vectors "$MODEL" "$DEVICE" "$p" "$OUT/images.txt" "$OUT/vectors_${p}_device.f32" >&2
    done
    EW_THREADS=$THREADS $H vectors "$MODEL" cpu fp32 "$OUT/images.txt" "$OUT/vectors_cpu.f32" >&2
    for b in $BATCHES; do
        log "end to end from JPEG files: ours, $DECODE_THREADS decode threads, batch $b"
        $H e2e "$MODEL" "$DEVICE" bf16 "$b" "$DECODE_THREADS" "$OUT/images.txt" "$E2E_IMAGES" \
            | sed 's/^/{"kind": "e2e_ours", "r": /; s/$/}/' || true
    done
} > "$OUT/harness.jsonl"
log "PyTorch in the same run: model only and a DataLoader with 16 PIL workers"
$PY bench/gpu/pytorch_ref.py --model "$MODEL" --device "$DEVICE" --images "$OUT/images.txt" --batches $BATCHES \
    --precisions $PRECISIONS --iters "$ITERS" --e2e-images "$E2E_IMAGES" --workers "${WORKERS:-16}" > "$OUT/pytorch.jsonl"
$PY bench/gpu/report.py --out "$OUT" --device "$DEVICE"
