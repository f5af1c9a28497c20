#!/usr/bin/python3
"""Export torchvision's ResNet50 as TorchScript for EwallML, with a model card beside it.

Pretrained (needs internet once, to download the ImageNet weights):
    python3 models/export_resnet50.py --out models/resnet50.pt --weights IMAGENET1K_V2

Random init (offline; vectors carry NO meaning, for tests and demos only):
    python3 models/export_resnet50.py --out models/resnet50.pt --random-init --seed 0 \
        --calibration-dir data/samples/calibration

What it writes:
  OUT                 TorchScript, traced from torchvision.models.resnet50 with fc = Identity,
                      in eval mode, BatchNorm folded into the convolutions (float32): input float32 [n,3,224,224] (ImageNet-normalised RGB),
                      output float32 [n,2048] (the pooled features, before any normalisation).
                      The file is traced but NOT frozen: freezing folds the weights into graph
                      constants, after which the runtime can no longer cast them to bfloat16.
                      EwallML freezes (torch::jit::freeze) at load, after choosing the precision.
  OUT minus .pt + .card.json   the model card: name, weights, pretrained, output_dim, expected
                      preprocessing, torch/torchvision versions, sha256 and size of OUT.

--random-init with --calibration-dir: a plain random-init ResNet50 maps every photo to nearly
the same vector (median cosine 0.998 between different photos), which hides bugs. Recalibrating
the BatchNorm running statistics on real photos (train-mode forward passes, cumulative average,
no weight updates) spreads them out (~0.95) so tests and demos see vectors that differ.

--int8 writes OUT as an int8 file of the same weights instead (as `make model` does for
models/resnet50_int8.pt): torchvision's quantizable ResNet50 with the same state dict, Conv+BN+ReLU
fused, post-training static quantization with per-channel int8 weights and per-tensor uint8
activations observed on --calibration-dir's photos (histogram observers), for the `onednn`
quantized engine (Debian's libtorch has no FBGEMM), traced, not frozen (EwallML freezes at load).
Input and output stay float32, so the shim runs it like any other file. Its card says
"precision": "int8" and carries the same "weights" string as the fp32 card: EwallML pairs the two
files by it. Without --random-init the pretrained weights are downloaded as for fp32.

Exit codes: 0 ok; 3 pretrained weights could not be downloaded (no internet); 2 bad arguments.
"""
import argparse
import datetime
import hashlib
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))


def card_path(model_path):
    base = model_path[:-3] if model_path.endswith(".pt") else model_path
    return base + ".card.json"


def calibration_batches(folder, count, seed):
    """`count` tensors from real photos: squash224 views plus seeded random crops and flips."""
    import torch
    from torchvision import transforms as T

    import ewall_reference as ref

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if not f.startswith("."))
    if not files:
        raise SystemExit(f"export: no images in calibration folder {folder}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    plain = ref.transform("squash224")
    aug = T.Compose([T.RandomResizedCrop(224, scale=(0.35, 1.0)), T.RandomHorizontalFlip(),
                     T.ToTensor(), T.Normalize(ref.MEAN, ref.STD)])
    images = [ref.load_rgb(f) for f in files]
    xs = [plain(im) for im in images]
    while len(xs) < count:
        xs.append(aug(rng.choice(images)))
    return torch.stack(xs[:count]), len(files)


def recalibrate_batchnorm(model, x, batch=16):
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over every batch seen
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i : i + batch])
    model.eval()


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def quantize_int8(model, x, batch=16):
    """An int8 copy of `model` (a torchvision ResNet50, fc = Identity, BatchNorm not yet folded):
    static post-training quantization for the onednn engine, observed on the batches `x`."""
    import torch
    from torchvision.models.quantization import resnet50 as quantizable_resnet50

    if "onednn" not in torch.backends.quantized.supported_engines:
        raise SystemExit(f"export: this torch has no onednn quantized engine "
                         f"(supported: {torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = "onednn"
    q = quantizable_resnet50(weights=None, quantize=False)
    q.fc = torch.nn.Identity()
    q.load_state_dict(model.state_dict())
    q.eval()
    q.fuse_model(is_qat=False)
    q.qconfig = torch.ao.quantization.get_default_qconfig("onednn")
    torch.ao.quantization.prepare(q, inplace=True)
    with torch.no_grad():
        for i in range(0, len(x), batch):
            q(x[i : i + batch])
    torch.ao.quantization.convert(q, inplace=True)
    return q


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="models/resnet50.pt")
    ap.add_argument("--weights", default="IMAGENET1K_V2", help="torchvision weights enum name")
    ap.add_argument("--random-init", action="store_true", help="seeded random weights, no download")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration-dir", help="real photos for BatchNorm recalibration (--random-init)")
    ap.add_argument("--calibration-count", type=int, default=64)
    ap.add_argument("--int8", action="store_true",
                    help="write OUT as int8 (post-training static quantization on --calibration-dir, onednn)")
    args = ap.parse_args()
    if args.int8 and not args.calibration_dir:
        ap.error("--int8 needs --calibration-dir: quantization observes real photos to choose its scales")

    import torch
    import torchvision

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    calibrated = None
    if args.random_init:
        torch.manual_seed(args.seed)
        model = torchvision.models.resnet50(weights=None)
        weights = f"random-init(seed={args.seed})"
    else:
        try:
            enum = torchvision.models.ResNet50_Weights[args.weights]
        except KeyError:
            ap.error(f"unknown weights {args.weights!r}; torchvision has "
                     f"{[w.name for w in torchvision.models.ResNet50_Weights]}")
        try:
            model = torchvision.models.resnet50(weights=enum)
        except Exception as e:  # URLError, HTTPError, OSError when offline
            print(f"export: could not download the {args.weights} weights: {e}", file=sys.stderr)
            sys.exit(3)
        weights = args.weights
    model.fc = torch.nn.Identity()
    model.eval()
    if args.random_init and args.calibration_dir:
        x, nfiles = calibration_batches(args.calibration_dir, args.calibration_count, args.seed)
        recalibrate_batchnorm(model, x)
        calibrated = {"images": len(x), "photos": nfiles, "method": "batchnorm running stats, cumulative"}
        weights += f"+bn-recalibrated({len(x)} views of {nfiles} photos)"

    quantization = None
    if args.int8:
        x, nfiles = calibration_batches(args.calibration_dir, args.calibration_count, args.seed + 1)
        model = quantize_int8(model, x)
        quantization = {"engine": "onednn", "method": "post-training static", "weights": "int8 per-channel",
                        "activations": "uint8 per-tensor, histogram observers",
                        "calibration": f"{len(x)} views of {nfiles} photos"}
    # Fold every BatchNorm into its convolution now, in float32. The runtime casts weights to
    # bfloat16 for --precision bf16; folding after that cast (as torch::jit::freeze would) loses
    # precision: measured on the random-init model, worst centered cosine bf16-vs-fp32 0.79
    # unfolded, 0.87 folded. float32 results are unchanged (cosine 0.9999999 to the unfolded net).
    if not args.int8:
        from torch.fx.experimental.optimization import fuse
        model = fuse(model)
    example = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    traced.save(tmp)
    os.replace(tmp, args.out)

    card = {
        "name": "resnet50",
        "architecture": "torchvision.models.resnet50, fc = Identity",
        "weights": weights,
        "pretrained": not args.random_init,
        "output_dim": 2048,
        "input": {"shape": [None, 3, 224, 224], "dtype": "float32", "color": "RGB",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "preprocessing": {"default": "squash224", "supported": ["squash224", "resize256-crop224"]},
        "precision": "int8" if args.int8 else "fp32",
        "quantization": quantization,
        "format": "torchscript-traced (frozen at load by EwallML)",
        "batchnorm": "folded into the convolutions in float32 before " + ("quantizing" if args.int8 else "tracing"),
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "seed": args.seed if args.random_init else None,
        "batchnorm_recalibration": calibrated,
        "sha256": sha256(args.out),
        "file_bytes": os.path.getsize(args.out),
        "created_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with open(card_path(args.out), "w") as f:
        json.dump(card, f, indent=2)
        f.write("\n")
    note = "" if card["pretrained"] else "  (RANDOM INIT: vectors carry no meaning)"
    print(f"export: wrote {args.out} ({card['precision']}) sha256={card['sha256'][:12]} weights={weights}{note}")


if __name__ == "__main__":
    main()
