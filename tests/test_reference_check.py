"""Every engine decodes the export's reference sentences when it loads, and refuses to run a graph that is off.

The reference (PyTorch fp32's greedy tokens and top log-probs for held-out sentences) is recorded by export.
A graph whose weight was changed after export, with the manifest's hash made to match (as a wrong
onnxruntime build or a GPU computing wrongly would look: the files check out, the numbers do not), is
refused at load, naming the variant, the provider and how far off it is.
"""

import json
import shutil
import subprocess
import sys

import onnx
import pytest
from onnx import numpy_helper

from s2s.engine import OrtEngine, load_model_dir, sha256
from s2s.reference import EngineCheckError


def test_every_variant_passes_its_check_where_it_loads(tiny_model_dir):
    md = load_model_dir(tiny_model_dir)
    m = md.manifest
    assert m["reference"]["sentences"] == len(json.loads((tiny_model_dir / m["reference"]["file"]).read_text())["tokens"]) > 0
    for variant in ("fp32", "int8", "fp16"):
        engine = OrtEngine(md, variant, "cpu")
        limit = m["variants"][variant]["check"]
        assert engine.checked["mean_abs_logprob_diff"] <= limit["mean_tolerance"], (variant, engine.checked)
    assert OrtEngine(md, "fp32", "cpu").checked["mean_abs_logprob_diff"] < 1e-4  # fp32 on the CPU: float noise only
    assert OrtEngine(md, "fp32", "cpu", use_vmap=True).checked is not None  # checked on the full softmax


def _with_scaled_weight(model_dir, tmp_path, variant, factor):
    """A copy of the model directory whose `variant` step graph has its output projection scaled, hashes rewritten."""
    copy = tmp_path / f"scaled-{variant}-{factor}"
    shutil.copytree(model_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    name = manifest["variants"][variant]["decoder_step"]
    graph = onnx.load(copy / name)
    # fp32 and fp16 hold the projection's weight as is; int8 as int8 values and a scale, which is what is scaled
    weight = next(i for i in graph.graph.initializer if i.name in ("model.generator.weight", "model.generator.weight_scale"))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * factor, weight.name))
    onnx.save(graph, copy / name)
    manifest["files"][name] = sha256(copy / name)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("variant,factor", [("fp32", 1.05), ("fp16", 1.2), ("int8", 1.5)])
def test_a_graph_with_a_perturbed_weight_is_refused_at_load(tiny_model_dir, tmp_path, variant, factor):
    wrong = _with_scaled_weight(tiny_model_dir, tmp_path, variant, factor)
    with pytest.raises(EngineCheckError, match=rf"variant {variant} on CPUExecutionProvider decodes the export's \d+ reference "
                                               r"sentences off PyTorch by mean \|delta log-prob\| [\d.e-]+ \(allowed"):
        OrtEngine(load_model_dir(wrong), variant, "cpu")
    others = {"fp32", "int8", "fp16"} - {variant}
    for other in others:  # the other variants' graphs are untouched and still load
        OrtEngine(load_model_dir(wrong), other, "cpu")


def test_translate_refuses_with_exit_2_before_writing_anything(tiny_model_dir, tmp_path):
    wrong = _with_scaled_weight(tiny_model_dir, tmp_path, "fp32", 1.05)
    (tmp_path / "in.txt").write_text("I like cats.\n")
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt"),
                           "--model", str(wrong), "--variant", "fp32", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "variant fp32 on CPUExecutionProvider" in done.stderr and "Refusing to translate" in done.stderr
    assert not (tmp_path / "out.txt").exists()
