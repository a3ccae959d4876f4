"""The ONNX graphs (encoder, decoder step, and the step without its projection): their modules, input/output names and dynamic axes, declared in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from s2s.model import Seq2Seq


class Encoder(torch.nn.Module):
    """src_ids (B, S), src_lens (B,) -> memory (B, S, H), mask (B, S), h0, c0 (B, L, H), feed0 (B, H)."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model
        self.eval()  # the exporter restores the wrapper's mode afterwards, and with it the model's

    def forward(self, src_ids, src_lens):
        return self.model.encode(src_ids, src_lens)


class DecoderStep(torch.nn.Module):
    """One decoding step with all state explicit -> log_probs (B, V), h, c, feed, attention (B, S)."""

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, prev, h, c, feed, memory, mask):
        return self.model.decode_step(prev, h, c, feed, memory, mask)


class DecoderState(torch.nn.Module):
    """The decoding step without the output projection -> feed (B, H), h, c, attention (B, S).

    For vocabulary-map decoding (`s2s/export/vmap.py`): the projection then runs outside the graph over the
    batch's shortlist of target tokens, with the generator weights saved beside the graphs.
    """

    def __init__(self, model: Seq2Seq):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, prev, h, c, feed, memory, mask):
        out, h, c, attn = self.model._step(prev, h, c, feed, memory, mask)
        return out, h, c, attn


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: dict[str, dict[int, str]]  # name -> dynamic axes
    outputs: dict[str, dict[int, str]]


ENCODER = GraphSpec(
    "encoder.onnx",
    inputs={"src_ids": {0: "batch", 1: "src_len"}, "src_lens": {0: "batch"}},
    outputs={"memory": {0: "batch", 1: "src_len"}, "mask": {0: "batch", 1: "src_len"},
             "h0": {0: "batch"}, "c0": {0: "batch"}, "feed0": {0: "batch"}},
)
DECODER_STEP = GraphSpec(
    "decoder_step.onnx",
    inputs={"prev": {0: "batch"}, "h": {0: "batch"}, "c": {0: "batch"}, "feed": {0: "batch"},
            "memory": {0: "batch", 1: "src_len"}, "mask": {0: "batch", 1: "src_len"}},
    outputs={"log_probs": {0: "batch"}, "h_out": {0: "batch"}, "c_out": {0: "batch"},
             "feed_out": {0: "batch"}, "attention": {0: "batch", 1: "src_len"}},
)


DECODER_STATE = GraphSpec(
    "decoder_state.onnx",
    inputs=DECODER_STEP.inputs,
    outputs={"feed_out": {0: "batch"}, "h_out": {0: "batch"}, "c_out": {0: "batch"}, "attention": {0: "batch", 1: "src_len"}},
)


def example_inputs(model: Seq2Seq, batch: int = 3, src_len: int = 7) -> tuple[tuple, tuple]:
    """Inputs to trace with: batch > 1 and mixed lengths, so nothing gets specialised to a constant."""
    cfg = model.cfg
    src = torch.randint(4, cfg.src_vocab_size, (batch, src_len))
    lens = torch.tensor([src_len] + [max(1, src_len - 2 - i) for i in range(batch - 1)], dtype=torch.long)
    src[torch.arange(src_len).unsqueeze(0) >= lens.unsqueeze(1)] = cfg.pad_id
    with torch.no_grad():
        memory, mask, h, c, feed = model.encode(src, lens)
    prev = torch.randint(4, cfg.tgt_vocab_size, (batch,))
    return (src, lens), (prev, h, c, feed, memory, mask)


def export_graph(module: torch.nn.Module, args: tuple, spec: GraphSpec, out_dir: Path, opset: int, dynamo: bool) -> Path:
    """Write one graph with `torch.onnx.export`, with either exporter."""
    path = Path(out_dir) / spec.file
    names_in, names_out = list(spec.inputs), list(spec.outputs)
    if dynamo:
        batch = torch.export.Dim("batch", min=1)
        src_len = torch.export.Dim("src_len", min=1)
        dims = {"batch": batch, "src_len": src_len}
        shapes = {n: {ax: dims[d] for ax, d in axes.items()} for n, axes in spec.inputs.items()}
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out, opset_version=opset,
                          dynamo=True, dynamic_shapes=shapes, external_data=False, optimize=True, verbose=False)
    else:
        torch.onnx.export(module, args, str(path), input_names=names_in, output_names=names_out, opset_version=opset,
                          dynamo=False, dynamic_axes={**spec.inputs, **spec.outputs}, do_constant_folding=True)
    return path
