import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from s2s.evaluate import load_model
from s2s.config import ExportConfig
from s2s.export.convert import ParityError, export_run
from s2s.engine import ModelDirError, OrtEngine, load_model_dir, load_translator, sha256
from s2s.export.vmap import build_vmap, shortlist
from s2s.search import beam_search, greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.config import DecodeConfig
from s2s.translator import TorchEngine
from s2s.run_dir import checkpoint_file


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def _random_batch(rng, batch, max_len, vocab):
    lens = rng.integers(1, max_len + 1, batch)
    lens[0] = max_len
    src = np.full((batch, max_len), PAD_ID, dtype=np.int64)
    for i, n in enumerate(lens):
        src[i, :n] = np.append(rng.integers(4, vocab, n - 1), EOS_ID)
    return src, lens.astype(np.int64)


@pytest.mark.parametrize("batch,max_len", [(1, 1), (1, 23), (7, 9), (37, 31), (64, 4)])
def test_parity_on_fresh_random_inputs(tiny_run, model_dir, batch, max_len):
    model, _ = load_model(checkpoint_file(tiny_run, "best"))
    ref, ort_engine = TorchEngine(model), OrtEngine(load_model_dir(model_dir), "fp32", "cpu")
    rng = np.random.default_rng()  # fresh inputs every run
    src, lens = _random_batch(rng, batch, max_len, model.cfg.src_vocab_size)
    s_ref, s_ort = ref.encode(src, lens), ort_engine.encode(src, lens)
    for k in s_ref:
        np.testing.assert_allclose(s_ort[k], s_ref[k].numpy(), atol=1e-5, err_msg=k)
    prev = np.full(batch, BOS_ID)
    for _ in range(6):  # several steps, feeding both the same random tokens
        lp_ref, s_ref = ref.step(prev, s_ref)
        lp_ort, s_ort = ort_engine.step(prev, s_ort)
        assert np.abs(lp_ref - lp_ort).max() <= 1e-4
        prev = rng.integers(4, model.cfg.tgt_vocab_size, batch)
    max_out = 2 * lens + 5
    g_ref = greedy_search(ref.step, ref.encode(src, lens), batch, BOS_ID, EOS_ID, max_out)
    g_ort = greedy_search(ort_engine.step, ort_engine.encode(src, lens), batch, BOS_ID, EOS_ID, max_out)
    assert [h.tokens for h in g_ref] == [h.tokens for h in g_ort]
    b_ort = beam_search(ort_engine.step, ort_engine.encode(src, lens), batch, BOS_ID, EOS_ID, max_out, beam_size=1)
    assert [h[0].tokens for h in b_ort] == [h.tokens for h in g_ort]


def test_manifest_records_what_a_user_needs(model_dir):
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert m["vocab_sizes"]["src"] == m["model_config"]["src_vocab_size"]
    assert set(m["files"]) == {p.name for p in model_dir.iterdir()} - {"manifest.json"}
    assert all(sha256(model_dir / f) == h for f, h in m["files"].items())
    assert m["parity"]["passed"] and m["parity"]["batch_sizes"] == [1, 37]
    assert m["parity"]["greedy"]["divergent"] == 0 and m["parity"]["max_abs_logprob_diff"] <= 1e-4
    assert {"torch", "onnx", "sentencepiece"} <= set(m["versions"]) and m["opset"] == 18
    assert m["training"]["metrics"]["valid_bleu"] is not None
    fp32, int8 = m["variants"]["fp32"]["valid_bleu"], m["variants"]["int8"]["valid_bleu"]
    assert m["default_cpu_variant"] == ("int8" if fp32 - int8 <= 0.5 else "fp32")
    assert m["default_gpu_variant"] == "fp16" and m["variants"]["fp16"]["parity"]["passed"]
    sizes = {name: v["bytes"] for name, v in m["variants"].items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"], sizes


def test_fp16_variant_holds_half_precision_weights_behind_float32_inputs_and_outputs(model_dir):
    import onnx

    m = json.loads((model_dir / "manifest.json").read_text())
    fp32, fp16 = (onnx.load(model_dir / m["variants"][v]["decoder_step"]) for v in ("fp32", "fp16"))
    assert [(i.name, i.type.tensor_type.elem_type) for i in fp16.graph.input] == [(i.name, i.type.tensor_type.elem_type) for i in fp32.graph.input]
    assert {o.type.tensor_type.elem_type for o in fp16.graph.output} == {onnx.TensorProto.FLOAT}
    weights = {i.name: i.data_type for i in fp16.graph.initializer}
    assert weights["model.generator.weight"] == onnx.TensorProto.FLOAT16
    # the search is the same code on it: a few sentences decode as with fp32
    texts = ["I like cats.", "Where is the station?", "Thank you very much."]
    a = load_translator(model_dir, variant="fp32").translate(texts)
    b = load_translator(model_dir, variant="fp16").translate(texts)
    assert [t.translation for t in a] == [t.translation for t in b]


def test_fp16_gate_leaves_out_an_fp16_graph_with_one_weight_off(tiny_run, tmp_path, monkeypatch):
    """Converting a step graph whose output projection is 20% off leaves fp16 out, and GPUs fall back to fp32."""
    import onnxruntime.transformers.float16 as float16
    from onnx import numpy_helper

    real_convert = float16.convert_float_to_float16

    def convert_a_wrong_graph(model, **kwargs):
        converted = real_convert(model, **kwargs)
        for weight in converted.graph.initializer:
            if weight.name == "model.generator.weight":
                weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.2, weight.name))
        return converted

    monkeypatch.setattr(float16, "convert_float_to_float16", convert_a_wrong_graph)
    m = export_run(tiny_run, tmp_path / "m", ExportConfig(parity_sentences=20, vmap=False))
    assert list(m["variants"]) == ["fp32"] and m["default_gpu_variant"] == "fp32" and not m["fp16_rejected"]["passed"]
    assert not list((tmp_path / "m").glob("*.fp16.onnx"))


def test_translator_over_the_model_dir(model_dir):
    translator = load_translator(model_dir, variant="fp32", device="cpu")
    out = translator.translate(["I like cats.", None, "", "I like cats."])
    assert out[0].translation is not None and out[0].error is None and out[0].score < 0
    assert out[1].error == "null text" and out[2].error == "empty or whitespace-only text"
    assert out[3] is out[0]  # identical sources decoded once


@pytest.mark.parametrize("beam_size", [1, 3])
def test_io_binding_gives_the_same_translations(model_dir, small_corpus, beam_size):
    """The I/O-binding path (the CUDA default) on the CPU provider: same state, same outputs as plain run()."""
    texts = pq.read_table(small_corpus).column("en").to_pylist()[:40]
    decode = DecodeConfig(beam_size=beam_size, use_vmap=False)  # I/O binding runs the full step graph
    plain = load_translator(model_dir, decode, variant="fp32", device="cpu", io_binding=False)
    bound = load_translator(model_dir, decode, variant="fp32", device="cpu", io_binding=True)
    assert bound.engine.io_binding and not plain.engine.io_binding
    state = bound.engine.encode(*_random_batch(np.random.default_rng(0), 5, 7, 50))
    assert isinstance(state["memory"], torch.Tensor)  # the state lives in device tensors, not numpy arrays
    a, b = plain.translate(texts), bound.translate(texts)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert np.allclose([x.score for x in a], [x.score for x in b], atol=1e-4)


def test_vmap_is_built_from_co_occurrence(tmp_path):
    rows = {"src_ids": [[10, 5, 3], [11, 5, 3], [10, 6, 3]], "tgt_ids": [[2, 20, 7, 3], [2, 21, 7, 3], [2, 20, 8, 3]]}
    pq.write_table(pa.table(rows), tmp_path / "train.parquet")
    v = build_vmap(tmp_path / "train.parquet", 30, 30, per_source=4, frequent=2)
    assert 20 in v["by_source"][10] and 21 not in v["by_source"][10] and 21 in v["by_source"][11]
    assert not np.isin(v["by_source"], [PAD_ID, 1, BOS_ID, EOS_ID]).any()  # special ids never take a slot
    assert list(v["frequent"]) == [7, 20]
    short = set(shortlist(v, np.array([10, EOS_ID]), (1, EOS_ID)).tolist())
    assert {1, EOS_ID, 7, 20} <= short and 21 not in short


def test_vmap_decoding(model_dir, small_corpus):
    """The shortlist path equals the full softmax when the shortlist is everything, and never leaves it."""
    m = json.loads((model_dir / "manifest.json").read_text())
    assert m["parity"]["decoder_state_max_abs_diff"] <= 1e-4 and "valid_bleu_vmap" in m["variants"]["int8"]
    assert m["variants"]["int8"]["parity"]["passed"] and m["variants"]["int8"]["parity"]["greedy"]["divergent"] == 0
    texts = pq.read_table(small_corpus).column("en").to_pylist()[:30]
    decode = DecodeConfig(max_decoding_length=20)
    full = load_translator(model_dir, replace(decode, use_vmap=False), variant="fp32", device="cpu")
    wide = load_translator(model_dir, replace(decode, use_vmap=True), variant="fp32", device="cpu")
    assert wide.engine.use_vmap and len(wide.engine.vmap["frequent"]) >= m["vocab_sizes"]["tgt"] - 4  # tiny vocab: all of it
    assert [x.tokens for x in full.translate(texts)] == [x.tokens for x in wide.translate(texts)]
    narrow = load_translator(model_dir, replace(decode, use_vmap=True), variant="fp32", device="cpu")
    narrow.engine.vmap["frequent"] = narrow.engine.vmap["frequent"][:10]
    for text in texts:
        out = narrow.translate([text])[0]
        allowed = shortlist(narrow.engine.vmap, np.array(narrow.src_sp.encode(text) + [EOS_ID]), (1, EOS_ID))
        assert set(out.tokens) <= set(allowed.tolist())


def test_changed_byte_is_refused_naming_the_file(model_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    data = bytearray((bad / "decoder_step.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "decoder_step.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match=r"decoder_step\.onnx: SHA-256 does not match"):
        load_model_dir(bad)
    (bad / "manifest.json").unlink()
    with pytest.raises(ModelDirError, match=r"manifest\.json: missing"):
        load_model_dir(bad)
    with pytest.raises(ModelDirError, match="no such model directory"):
        load_model_dir(tmp_path / "nothing")


def test_gate_rejects_a_graph_with_one_weight_off_by_one_percent(tiny_run, tmp_path, monkeypatch):
    """A genuinely wrong graph, not an impossible tolerance: the step graph is exported from weights with
    one matrix scaled by 1.01, then PyTorch's own weights are put back for the gate to compare against."""
    import s2s.export.convert as convert

    real_export = convert.export_graph

    def export_with_a_wrong_weight(module, args, spec, out_dir, opset, dynamo):
        if spec.file != "decoder_step.onnx":
            return real_export(module, args, spec, out_dir, opset, dynamo)
        weight = module.model.generator.weight
        kept = weight.detach().clone()
        with torch.no_grad():
            weight.mul_(1.01)
        try:
            return real_export(module, args, spec, out_dir, opset, dynamo)
        finally:
            with torch.no_grad():
                weight.copy_(kept)

    monkeypatch.setattr(convert, "export_graph", export_with_a_wrong_weight)
    out = tmp_path / "wrong"
    with pytest.raises(ParityError, match=r"parity gate failed: max \|delta log-prob\| .* \(tolerance .*No model directory"):
        export_run(tiny_run, out, ExportConfig(parity_sentences=20))
    assert not out.exists() and not list(tmp_path.glob(".wrong*"))


def test_int8_gate_leaves_out_an_int8_graph_with_one_weight_off(tiny_run, tmp_path, monkeypatch):
    """The int8 variant has its own gate: quantizing a step graph whose output projection is 20% off (a
    wrong graph, not quantization noise) leaves int8 out of the model directory, and fp32 is the default."""
    import onnx
    import onnxruntime.quantization as quantization
    from onnx import numpy_helper

    real_quantize = quantization.quantize_dynamic

    def quantize_a_wrong_graph(model_input, model_output, **kwargs):
        if Path(model_input).name == "decoder_step.onnx":
            graph = onnx.load(model_input)
            weight = next(i for i in graph.graph.initializer if i.name == "model.generator.weight")
            weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.2, weight.name))
            model_input = tmp_path / "wrong_step.onnx"
            onnx.save(graph, model_input)
        return real_quantize(model_input, model_output, **kwargs)

    monkeypatch.setattr(quantization, "quantize_dynamic", quantize_a_wrong_graph)
    m = export_run(tiny_run, tmp_path / "m", ExportConfig(parity_sentences=20, quantize="int8", vmap=False, fp16=False))
    assert list(m["variants"]) == ["fp32"] and m["default_cpu_variant"] == "fp32" and not m["int8_rejected"]["passed"]
    assert not list((tmp_path / "m").glob("*.int8.onnx")) and m["parity"]["passed"]


def test_export_refuses_to_overwrite(tiny_run, model_dir):
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(tiny_run, model_dir, ExportConfig())


def test_dynamo_exporter_also_passes_the_gate(tiny_run, tmp_path):
    manifest = export_run(tiny_run, tmp_path / "dyn", ExportConfig(exporter="dynamo", parity_sentences=40))
    assert manifest["exporter"] == "dynamo" and manifest["parity"]["passed"]
    with pytest.raises(ValueError, match="torchscript"):
        ExportConfig(exporter="dynamo", quantize="int8")


def test_long_input_is_refused_or_truncated_as_asked(model_dir):
    long_text = " ".join(["cat"] * 40)
    refuse = load_translator(model_dir, DecodeConfig(max_input_tokens=5, max_decoding_length=10), variant="fp32", device="cpu")
    over = " ".join(["cat"] * 6)  # short enough to tokenize, too many tokens
    out = refuse.translate([long_text, "Hi.", over])
    assert out[0].translation is None and out[0].error.startswith(f"input has {len(long_text)} characters, more than "
                                                                  "max_input_tokens=5 tokens can hold")  # refused on its length
    assert out[1].error is None
    assert out[2].translation is None and "over max_input_tokens=5" in out[2].error and out[2].src_tokens > 5
    cut = load_translator(model_dir, DecodeConfig(max_input_tokens=5, truncate_long_input=True, max_decoding_length=10),
                          variant="fp32", device="cpu")
    t = cut.translate([long_text])[0]
    assert t.error is None and t.translation is not None and t.src_tokens == 5
