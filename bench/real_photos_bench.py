#!/usr/bin/python3
"""`make bench`: end to end on real photos of mixed sizes (data/samples/real: 128 to 4,000 px,
JPEG and PNG; `make_samples.py --real N`), files on local disk, same model file, same run.
Prints a table of ratios and writes bench/out/real_photos.json.

  - ours, default settings: `ewall embed --npy` (libtorch on --threads, decode threads = the
    cores left over, at least 1; fp32; exact decode). images/s from its summary (model load
    excluded, first batch included).
  - ours with --precision auto (and --fast-jpeg), for reference.
  - the platform's pipeline: one process, one thing after another: PIL open + convert('RGB'),
    torchvision Resize((224,224)) + ToTensor + Normalize, eager torchvision resnet50 (fc =
    Identity) in fp32 NCHW, batches of 32, L2 normalisation.
  - PyTorch's best CPU configuration at fp32: the same PIL + torchvision decode in DataLoader
    worker processes (as many as the cores left over by the model's threads, at least 1),
    batches of 32, the TorchScript file frozen (torch.jit.freeze) with channels-last input.
    Also with bf16 (module cast to bfloat16, frozen, channels-last) and with PIL's JPEG draft
    mode, each reported against our matching setting.
Python sides are timed from the first decode to the last vector, model construction and one
warm-up batch of zeros excluded. Numbers on this 2-core machine vary 15-30% between runs
(and more when other work shares the machine): compare the ratios within one run.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BATCH = 32
SUMMARY = re.compile(r"ewall embed: (\d+) embedded, (\d+) failed, .*?([\d.]+) images/s")


def ours(ewall, model, files, threads, extra, may_refuse=None):
    """images/s and the summary lines of `ewall embed`; (None, [reason]) when it exits 2 with
    `may_refuse` in its error (bf16 where the CPU has no native bfloat16)."""
    out = f"/tmp/ewall-real-{os.getpid()}.npy"
    r = subprocess.run([ewall, "embed", "--model", model, "--threads", str(threads), "--npy", out, *extra, *files],
                       capture_output=True, text=True)
    if os.path.exists(out):
        os.unlink(out)
    if r.returncode != 0 and may_refuse and may_refuse in r.stderr:
        return None, [r.stderr.strip().splitlines()[-1]]
    if r.returncode != 0:
        sys.exit(f"ewall embed {' '.join(extra)} failed: {r.stderr[-2000:]}")
    m = SUMMARY.search(r.stderr)
    if not m:
        sys.exit(f"no summary in: {r.stderr[-2000:]}")
    if int(m.group(2)):
        sys.exit(f"ewall embed {' '.join(extra)}: {m.group(2)} photos failed")
    lines = [l for l in r.stderr.splitlines() if l.startswith("ewall embed:")]
    return float(m.group(3)), lines


def python_side(kind, model_path, files, threads, workers):
    """Runs in its own process (fresh torch state, own peak RSS)."""
    import numpy as np  # noqa: F401
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(threads)
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    draft = kind.endswith("_draft")

    def load(path):
        im = Image.open(path)
        if draft:
            im.draft("RGB", (224, 224))
        return tf(im.convert("RGB"))

    zeros = torch.zeros(BATCH, 3, 224, 224)
    with torch.inference_mode():
        if kind == "platform":
            model = torchvision.models.resnet50(weights=None)
            model.fc = torch.nn.Identity()
            model.eval()
            model(zeros)
            start = time.perf_counter()
            n = 0
            for i in range(0, len(files), BATCH):
                x = torch.stack([load(f) for f in files[i:i + BATCH]])
                n += torch.nn.functional.normalize(model(x), dim=1).shape[0]
            return n / (time.perf_counter() - start)

        bf16 = kind.startswith("best_bf16")
        if kind.startswith("best_int8"):  # the int8 file beside the model, on the onednn engine
            torch.backends.quantized.engine = "onednn"
            model_path = model_path[:-3] + "_int8.pt" if model_path.endswith(".pt") else model_path + "_int8.pt"
        m = torch.jit.load(model_path).eval()
        if bf16:
            m = m.to(torch.bfloat16)
        model = torch.jit.freeze(m)
        cast = (lambda x: x.to(torch.bfloat16)) if bf16 else (lambda x: x)
        model(cast(zeros.contiguous(memory_format=torch.channels_last)))

        class Files(torch.utils.data.Dataset):
            def __len__(self):
                return len(files)

            def __getitem__(self, i):
                return load(files[i])

        loader = torch.utils.data.DataLoader(Files(), batch_size=BATCH, num_workers=workers, prefetch_factor=2,
                                             persistent_workers=False)
        start = time.perf_counter()
        n = 0
        for x in loader:
            y = model(cast(x.contiguous(memory_format=torch.channels_last))).float()
            n += torch.nn.functional.normalize(y, dim=1).shape[0]
        return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall", default=".build/release/ewall")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/real")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--python-side", nargs=2, metavar=("KIND", "FILES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    workers = max(1, (os.cpu_count() or 2) - args.threads)
    if args.python_side:
        kind, listing = args.python_side
        with open(listing) as f:
            files = [l.strip() for l in f if l.strip()]
        print(json.dumps({"images_per_s": python_side(kind, args.model, files, args.threads, workers)}))
        return
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images))
    listing = f"/tmp/ewall-real-files-{os.getpid()}.txt"
    with open(listing, "w") as f:
        f.write("\n".join(files))

    def py(kind):
        r = subprocess.run([sys.executable, __file__, "--model", args.model, "--threads", str(args.threads),
                            "--python-side", kind, listing], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"python side {kind} failed: {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])["images_per_s"]

    res = {"photos": len(files), "threads": args.threads, "python_workers": workers,
           "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")}
    res["ours_default"], lines = ours(args.ewall, args.model, files, args.threads, [])
    res["ours_default_summary"] = lines
    res["py_platform"] = py("platform")
    res["py_best_fp32"] = py("best_fp32")
    # One stream of all the threads against as many single-threaded streams (README, "Model streams").
    default_streams = int(m.group(1)) if (m := re.search(r"\((\d+) streams of", " ".join(lines))) else 1
    other = 1 if default_streams > 1 else args.threads
    res["ours_streams_other"], _ = ours(args.ewall, args.model, files, args.threads, ["--streams", str(other)])
    res["streams_other"] = other
    res["ours_auto"], lines = ours(args.ewall, args.model, files, args.threads, ["--precision", "auto"])
    res["ours_auto_summary"] = lines
    # Where bfloat16 is not native, ewall refuses bf16 and PyTorch's would be emulated: no bf16 row.
    res["ours_bf16"], why = ours(args.ewall, args.model, files, args.threads, ["--precision", "bf16"],
                                 may_refuse="no native bfloat16")
    res["py_best_bf16"] = py("best_bf16") if res["ours_bf16"] else None
    if res["ours_bf16"] is None:
        res["bf16_skipped"] = why[0]
    res["ours_fast_jpeg"], _ = ours(args.ewall, args.model, files, args.threads, ["--fast-jpeg"])
    res["py_best_fp32_draft"] = py("best_fp32_draft")
    os.unlink(listing)
    rows = [
        ("default vs platform pipeline", "ours_default", "py_platform", ">= 2.5"),
        ("default vs PyTorch best fp32", "ours_default", "py_best_fp32", ">= 1.2"),
        (f"--streams {res['streams_other']} vs PyTorch best fp32", "ours_streams_other", "py_best_fp32", ""),
        ("auto vs PyTorch best fp32", "ours_auto", "py_best_fp32", ""),
        ("bf16 vs PyTorch best bf16", "ours_bf16", "py_best_bf16", ""),
        ("fast JPEG vs PyTorch draft", "ours_fast_jpeg", "py_best_fp32_draft", ""),
    ]
    print(f"\nEnd to end on {len(files)} real photos (128-4000 px, JPEG+PNG), files on disk, {args.threads} model "
          f"threads, batch 32, CPU {res['cpu']}\n")
    print(f"{'measure':32} {'EwallML img/s':>14} {'Python img/s':>13}  {'ratio':>6}  target")
    for label, a, b, target in rows:
        if res[a] is None or res[b] is None:
            print(f"{label:32} {'skipped':>14}  ({res.get('bf16_skipped', '')})")
            continue
        print(f"{label:32} {res[a]:14.1f} {res[b]:13.1f}  {res[a] / res[b]:5.2f}x  {target}")
    for line in res["ours_auto_summary"]:
        print(line)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "real_photos.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(f"\nwritten: {os.path.join(args.out, 'real_photos.json')}")


if __name__ == "__main__":
    main()
