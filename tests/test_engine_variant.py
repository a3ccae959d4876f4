"""The variant an engine runs follows the provider that loaded, not the device asked for.

No GPU here. "CUDA loaded" is faked from the test side: onnxruntime's session is wrapped to report the
CUDA provider first whenever it was asked for (its computation stays on the CPU), as a machine with a GPU
and onnxruntime-gpu would report it. Without the fake, asking for CUDA on this CPU build of onnxruntime
falls back to the CPU provider, exactly the case where a GPU variant must not be kept.
"""

import json

import onnxruntime as ort
import pytest

import s2s.engine as engine_module
from s2s.engine import ModelDirError, OrtEngine, load_model_dir, variant_for

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class FakeCudaSession(ort.InferenceSession):
    def __init__(self, path, opts=None, providers=None):
        self.asked = list(providers or [])
        super().__init__(path, opts, providers=[CPU])

    def get_providers(self):
        return [CUDA, CPU] if CUDA in self.asked else [CPU]


@pytest.fixture
def cuda_asked(monkeypatch):
    """choose_providers as on a machine where onnxruntime's CUDA provider can load."""
    monkeypatch.setattr(engine_module, "choose_providers", lambda device: [CPU] if device == "cpu" else [CUDA, CPU])


def test_variant_for_each_provider():
    m = {"variants": {"fp32": {}, "int8": {}, "fp16": {}}, "default_cpu_variant": "int8", "default_gpu_variant": "fp16"}
    assert variant_for(m, "auto", CPU) == "int8" and variant_for(m, "auto", CUDA) == "fp16"
    assert variant_for({"variants": {"fp32": {}, "int8": {}}, "default_cpu_variant": "int8"}, "auto", CUDA) == "fp32"
    assert variant_for(m, "int8", CUDA) == "int8"  # asked for by name: kept
    with pytest.raises(ModelDirError, match="no variant 'bf16'"):
        variant_for(m, "bf16", CPU)


def test_cuda_that_loads_runs_the_gpu_default_and_cuda_that_falls_back_runs_the_cpu_default(tiny_model_dir, cuda_asked,
                                                                                            monkeypatch):
    md = load_model_dir(tiny_model_dir)
    assert md.manifest["default_cpu_variant"] == "int8"  # the tiny model's int8 passes its gates
    # asked for CUDA, and the CPU provider is what loaded: the CPU default, not the variant picked for CUDA
    fell_back = OrtEngine(md, "auto", "auto", io_binding=False)
    assert (fell_back.provider, fell_back.variant) == (CPU, "int8")
    # CUDA loaded: the GPU default (fp16, which the export made and gated), never the CPU-only int8
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    assert md.manifest["default_gpu_variant"] == "fp16"
    on_gpu = OrtEngine(md, "auto", "auto", io_binding=False)
    assert (on_gpu.provider, on_gpu.variant) == (CUDA, "fp16")
    assert OrtEngine(md, "auto", "cpu").variant == "int8"
    # a model exported before GPU variants existed (or whose fp16 failed its gate) runs fp32 on CUDA
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    del manifest["default_gpu_variant"]
    assert OrtEngine(engine_module.ModelDir(tiny_model_dir, manifest), "auto", "auto", io_binding=False).variant == "fp32"
