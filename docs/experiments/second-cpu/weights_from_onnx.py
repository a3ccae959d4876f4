"""Rebuild a PyTorch checkpoint (model weights and config only) from a model directory's fp32 ONNX graphs.

The second CPU of issue 19 is reached through a machine that takes 64 MiB of files per call: the fp32 and
int8 graphs fit, the training checkpoint beside them does not, and its weights are already in the fp32 graphs.
The decoder's weights keep their PyTorch names there; the encoder's LSTMs were packed by the exporter into
ONNX's layout (gates i, o, f, c; bias = input bias then recurrent bias), which is undone here.

    python docs/experiments/second-cpu/weights_from_onnx.py MODEL_DIR OUT.pt [--check RUN_CHECKPOINT.pt]

--check compares every tensor with the training checkpoint's and fails unless all are bit-identical.
"""
from __future__ import annotations

import argparse
import json
import sys

import onnx
import torch
from onnx import numpy_helper


def onnx_to_torch_gates(w: torch.Tensor) -> torch.Tensor:
    """ONNX LSTM gate blocks (i, o, f, c) along dim 0 -> PyTorch's (i, f, g=c, o)."""
    i, o, f, c = w.chunk(4, dim=0)
    return torch.cat([i, f, c, o], dim=0)


def rebuild(model_dir: str) -> dict:
    manifest = json.loads(open(f"{model_dir}/manifest.json").read())
    files = manifest["variants"]["fp32"]
    state: dict[str, torch.Tensor] = {}

    step = onnx.load(f"{model_dir}/{files['decoder_step']}")
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in step.graph.initializer}
    for name, t in inits.items():
        if name.startswith("model."):
            state[name.removeprefix("model.")] = t
    # the attention's two bias-free Linear layers appear as MatMul constants, transposed: (in, out)
    matmuls = [t for n, t in inits.items() if n.startswith("onnx::MatMul")]
    H = state["cells.0.weight_hh"].shape[1]
    for t in matmuls:
        if tuple(t.shape) == (H, H):
            state["attn_query.weight"] = t.T.contiguous()
        elif tuple(t.shape) == (2 * H, H):
            state["attn_out.weight"] = t.T.contiguous()

    enc = onnx.load(f"{model_dir}/{files['encoder']}")
    inits = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in enc.graph.initializer}
    state["src_emb.weight"] = inits["model.src_emb.weight"]
    lstms = [n for n in enc.graph.node if n.op_type == "LSTM"]
    if len(lstms) % 2:
        raise ValueError(f"{model_dir}: expected forward and backward LSTMs in pairs, found {len(lstms)}")
    # the exporter emits each layer's forward LSTM, then its backward one (checked by --check below)
    for k, node in enumerate(lstms):
        layer, side = k // 2, ("fwd", "bwd")[k % 2]
        W, R, B = (inits[node.input[j]][0] for j in (1, 2, 3))
        h4 = W.shape[0]
        state[f"{side}.{layer}.weight_ih_l0"] = onnx_to_torch_gates(W)
        state[f"{side}.{layer}.weight_hh_l0"] = onnx_to_torch_gates(R)
        state[f"{side}.{layer}.bias_ih_l0"] = onnx_to_torch_gates(B[:h4])
        state[f"{side}.{layer}.bias_hh_l0"] = onnx_to_torch_gates(B[h4:])

    return {"model": state, "model_config": manifest["model_config"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("out")
    p.add_argument("--check", help="a training checkpoint.pt whose model weights must come back bit for bit")
    a = p.parse_args()
    ckpt = rebuild(a.model_dir)
    if a.check:
        ref = torch.load(a.check, map_location="cpu", weights_only=False)
        got, want = ckpt["model"], ref["model"]
        bad = sorted(set(got) ^ set(want)) + [k for k in want if k in got and not torch.equal(got[k], want[k])]
        if bad:
            sys.exit(f"weights differ from {a.check}: {bad}")
        if ckpt["model_config"] != ref["model_config"]:
            sys.exit(f"config differs: {ckpt['model_config']} vs {ref['model_config']}")
        print(f"all {len(want)} tensors bit-identical to {a.check}; config {ckpt['model_config']}")
    torch.save(ckpt, a.out)


if __name__ == "__main__":
    main()
