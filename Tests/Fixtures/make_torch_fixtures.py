#!/usr/bin/python3
"""Tiny TorchScript fixtures for the libtorch shim's tests, written to .fixtures/torch/.

Every model takes float32 [n, 3, 8, 8]. `expected.json` holds inputs and the outputs Python
computed, so the Swift tests can assert exact numbers.

  linear4.pt          [n,3,8,8] -> channel means [n,3] -> fixed 3x4 matrix + bias -> [n,4]
  special_rows.pt     like channel means, but a row whose mean is > 100 becomes NaN and a row
                      whose mean is exactly 0 stays all zeros (item errors, not vectors)
  output_4d.pt        returns its input: [n,3,8,8] is not [n,D]
  output_tuple.pt     returns a tuple
  output_int.pt       returns int64 [n,3]
  frozen_linear4.pt   linear4, frozen before saving: no parameters left, so no bf16
  unsupported_op.pt   linear4 with its code rewritten to call aten::sigmoix, an operator no
                      libtorch has (what a file from a newer torch looks like to an older one)
  int8_conv4.pt       a quantized (int8, onednn) conv net: quant -> conv 3->4 + ReLU -> mean pool
                      -> dequant, [n,4] float; traced, as models/export_resnet50.py --int8 writes
  state_dict.pt       torch.save(model.state_dict()): a PyTorch archive, not TorchScript
  not_torchscript.pt  a text file
"""
import json
import os
import shutil
import sys
import zipfile

import torch

OUT = sys.argv[1] if len(sys.argv) > 1 else ".fixtures/torch"
W = torch.tensor([[1.0, 0.0, 2.0, -1.0], [0.0, 1.0, 0.5, 3.0], [0.5, -2.0, 0.0, 1.0]])
B = torch.tensor([0.25, 0.0, -0.5, 1.0])


class Linear4(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.proj.weight.copy_(W.t())
            self.proj.bias.copy_(B)

    def forward(self, x):
        return torch.sigmoid(self.proj(x.mean(dim=(2, 3)))) * 4.0


class SpecialRows(torch.nn.Module):
    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return torch.where(m > 100.0, m * float("nan"), m)


class Output4D(torch.nn.Module):
    def forward(self, x):
        return x * 1.0


class OutputTuple(torch.nn.Module):
    def forward(self, x):
        m = x.mean(dim=(2, 3))
        return m, m


class OutputInt(torch.nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3)).long()


def rewrite_op(src, dst, old, new):
    assert len(old) == len(new), "same length keeps the debug source ranges valid"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        found = False
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith(".py") and old.encode() in data:
                data = data.replace(old.encode(), new.encode())
                found = True
            zout.writestr(item, data)
        assert found, f"{old} not found in {src}"


class Conv4(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):
        return self.dequant(torch.flatten(self.pool(self.relu(self.conv(self.quant(x)))), 1))


def int8_conv4(calibration):
    """Conv4, statically quantized for onednn, observed on `calibration`, traced."""
    torch.backends.quantized.engine = "onednn"
    m = Conv4().eval()
    torch.ao.quantization.fuse_modules(m, [["conv", "relu"]], inplace=True)
    m.qconfig = torch.ao.quantization.get_default_qconfig("onednn")
    torch.ao.quantization.prepare(m, inplace=True)
    with torch.no_grad():
        m(calibration)
    torch.ao.quantization.convert(m, inplace=True)
    with torch.no_grad():
        return torch.jit.trace(m, calibration[:2])


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    torch.manual_seed(0)
    example = torch.zeros(2, 3, 8, 8)
    lin = Linear4().eval()
    torch.jit.script(lin).save(f"{OUT}/linear4.pt")
    torch.jit.freeze(torch.jit.script(lin).eval()).save(f"{OUT}/frozen_linear4.pt")
    torch.jit.script(SpecialRows()).save(f"{OUT}/special_rows.pt")
    torch.jit.script(Output4D()).save(f"{OUT}/output_4d.pt")
    torch.jit.script(OutputTuple()).save(f"{OUT}/output_tuple.pt")
    torch.jit.script(OutputInt()).save(f"{OUT}/output_int.pt")
    rewrite_op(f"{OUT}/linear4.pt", f"{OUT}/unsupported_op.pt", "torch.sigmoid(", "torch.sigmoix(")
    torch.save(lin.state_dict(), f"{OUT}/state_dict.pt")
    with open(f"{OUT}/not_torchscript.pt", "w") as f:
        f.write("this is not a model\n")

    # Inputs: image i is filled with channel values (a_i, b_i, c_i); the means are those values.
    fills = [[0.1, 0.2, 0.3], [1.0, -1.0, 0.5], [0.0, 0.0, 0.0], [2.0, 3.0, -4.0], [200.0, 1.0, 1.0]]
    x = torch.tensor(fills).view(-1, 3, 1, 1).expand(-1, 3, 8, 8).contiguous()
    with torch.no_grad():
        lin_out = lin(x)
        special = SpecialRows()(x)
    # The int8 model sees images with texture (a constant image is one value per channel).
    g = torch.Generator().manual_seed(1)
    textured = (x[:4] + torch.rand(4, 3, 8, 8, generator=g)).contiguous()
    q = int8_conv4(textured)
    q.save(f"{OUT}/int8_conv4.pt")
    with torch.no_grad():
        q_out = q(textured)
    expected = {
        "input_shape": [3, 8, 8],
        "textured": textured.flatten().tolist(),
        "int8_conv4": q_out.tolist(),
        "fills": fills,
        "linear4": lin_out.tolist(),
        "special_rows": [[None if v != v else v for v in row] for row in special.tolist()],
    }
    with open(f"{OUT}/expected.json", "w") as f:
        json.dump(expected, f, indent=1)
    print(f"make_torch_fixtures: wrote {len(os.listdir(OUT))} files to {OUT}")


if __name__ == "__main__":
    main()
