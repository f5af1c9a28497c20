#!/usr/bin/env python3
"""PyTorch's side of bench/gpu/run.sh, same run, same model file: model only at each batch and
precision (frozen TorchScript, channels-last; fp32 with TF32 off, as the reference), and end to
end from the same JPEG files through a DataLoader with 16 PIL workers (Resize((224,224)),
ToTensor, Normalize), bf16. One JSON object per line."""
import argparse
import json
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--images", required=True)
    ap.add_argument("--batches", nargs="+", type=int, default=[32, 256])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--e2e-images", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=16)
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

    def load(p):
        m = torch.jit.load(args.model, map_location=device).eval()
        if p != "fp32":
            m = m.to(dtypes[p])
        return torch.jit.freeze(m)

    for p in args.precisions:
        if device.type == "cpu" and p == "fp16":
            continue
        m = load(p)
        for b in args.batches:
            x = torch.randn(b, 3, 224, 224).to(device).to(dtypes[p]).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                for _ in range(3):
                    m(x)
                sync(device)
                t = time.perf_counter()
                for _ in range(args.iters):
                    m(x).float().cpu()
                sync(device)
                s = time.perf_counter() - t
            print(json.dumps({"kind": "model_pytorch", "r": {"precision": p, "batch": b, "images_per_s": b * args.iters / s}}),
                  flush=True)

    # End to end: DataLoader with PIL workers feeding the bf16 model.
    from PIL import Image
    import torchvision.transforms as T
    files = [l.strip() for l in open(args.images) if l.strip()]
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return args.e2e_images

        def __getitem__(self, i):
            return tf(Image.open(files[i % len(files)]).convert("RGB"))

    m = load("bf16")
    for b in args.batches:
        loader = torch.utils.data.DataLoader(Files(), batch_size=b, num_workers=args.workers, pin_memory=device.type == "cuda",
                                             prefetch_factor=4 if args.workers else None)
        n = 0
        t = time.perf_counter()
        with torch.inference_mode():
            for x in loader:
                x = x.to(device, non_blocking=True).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
                y = torch.nn.functional.normalize(m(x).float(), dim=1).cpu()
                n += y.shape[0]
        s = time.perf_counter() - t
        print(json.dumps({"kind": "e2e_pytorch", "r": {"batch": b, "workers": args.workers, "images": n, "images_per_s": n / s}}),
              flush=True)


if __name__ == "__main__":
    main()
