"""The inference engine: load an exported model directory (from a path or a URI, verified against its manifest)
and run it with onnxruntime on the provider that loads (PyTorch only holds device buffers for I/O binding).

Both `s2s-job translate` (its actors and text mode) and `s2s.export` (the parity check) use it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s.storage import build_folder_once, filesystem, is_uri
from s2s.reference import check as check_reference
from s2s.search import State
from s2s.tokenizer import load_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import Translator

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "s2s-job-model/1"


class DeviceError(RuntimeError):
    """The device asked for cannot be used here (--device cuda without a loadable CUDA provider)."""


class ModelDirError(ValueError):
    """A model directory that cannot be used; the message names the file and what to do."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model or a run depends on, for manifests and _run.json."""
    from importlib import metadata

    out = {}
    for pkg in ("s2s-job", "torch", "onnx", "onnxruntime-gpu", "onnxruntime", "sentencepiece", "numpy", "pyarrow", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def usable_cpus() -> int:
    """The cores this process may run on: fewer than os.cpu_count() under taskset, a cgroup cpuset or a
    container's CPU pinning, where one onnxruntime thread per host core would oversubscribe them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    path: Path
    manifest: dict

    def file(self, name: str) -> Path:
        return self.path / name


def fetch_model_dir(uri: str) -> Path:
    """A model directory on object storage (s3://, gs://), copied once per machine into the model cache
    ($S2S_MODEL_CACHE, by default ~/.cache/s2s-job/models).

    The copy is keyed by the SHA-256 of the remote manifest, so a re-exported model is fetched again and
    an unchanged one never is; it is assembled under a temporary name and renamed, so processes fetching
    at the same time (the actors of one node) never see half a copy. `load_model_dir` verifies it as any other.
    """
    import pyarrow.fs as pafs

    fs, base = filesystem(uri.rstrip("/"))
    try:
        with fs.open_input_stream(f"{base}/{MANIFEST}") as f:
            raw = f.read()
    except (FileNotFoundError, OSError) as e:
        raise ModelDirError(f"{uri.rstrip('/')}/{MANIFEST}: cannot be read ({e}); {uri} is not an exported model directory.") from e
    cache = Path(os.environ.get("S2S_MODEL_CACHE") or Path.home() / ".cache" / "s2s-job" / "models")
    target = cache / hashlib.sha256(raw).hexdigest()[:24]
    if (target / MANIFEST).is_file():
        return target
    try:
        names = list(json.loads(raw)["files"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ModelDirError(f"{uri.rstrip('/')}/{MANIFEST}: not an s2s-job manifest ({e}).") from e

    def fetch(folder: Path) -> None:
        for name in names:
            pafs.copy_files(f"{base}/{name}", str(folder / name), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        (folder / MANIFEST).write_bytes(raw)

    return build_folder_once(target, fetch)


def load_model_dir(path: str | Path) -> ModelDir:
    """Read manifest.json and check every file's SHA-256; raise ModelDirError naming what is wrong.

    `path` may be a URI (s3://, gs://): the directory is then fetched into a local cache first."""
    path = fetch_model_dir(path) if is_uri(path) else Path(path)
    hint = "Export one with `s2s-job export RUN_DIR --output MODEL_DIR`."
    if not path.is_dir():
        raise ModelDirError(f"{path}: no such model directory. {hint}")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ModelDirError(f"{mpath}: missing; {path} is not an exported model directory. {hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelDirError(f"{mpath}: not valid JSON ({e}). Re-export the model.") from e
    if manifest.get("format") != FORMAT or "files" not in manifest:
        raise ModelDirError(f"{mpath}: not an s2s-job manifest (format {manifest.get('format')!r}, expected {FORMAT!r}). {hint}")
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise ModelDirError(f"{f}: listed in the manifest but missing. Re-export the model or restore the file.")
        if sha256(f) != digest:
            raise ModelDirError(f"{f}: SHA-256 does not match the manifest; the file was changed or corrupted. Re-export the model.")
    return ModelDir(path, manifest)


def cuda_available() -> tuple[bool, str]:
    """Whether onnxruntime's CUDA provider can load here, and why not; checked without creating a session.

    onnxruntime-gpu lists the CUDA provider as available even on machines with no GPU or CUDA libraries,
    and a session asked for it then logs load errors and falls back to the CPU. So: look for the driver,
    then try to load the provider library itself (which pulls in CUDA and cuDNN).
    """
    import ctypes

    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no NVIDIA driver (libcuda.so.1 not found)"
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels, where those are installed
        except Exception:  # noqa: BLE001 - the load below says what is missing
            pass
    capi = Path(ort.__file__).parent / "capi"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / "libonnxruntime_providers_cuda.so"))
    except OSError as e:
        return False, f"the CUDA provider cannot load: {e}"
    return True, ""


def choose_providers(device: str) -> list[str]:
    """onnxruntime providers for `device` ('auto', 'cpu' or 'cuda'); 'cuda' fails at once where CUDA cannot load."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    ok, why = cuda_available()
    if not ok:
        if device == "cuda":
            raise DeviceError(f"--device cuda: {why}. Use --device cpu or auto, or fix the CUDA install.")
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def variant_for(manifest: dict, asked: str, provider: str, where: Path | str = "the model") -> str:
    """The variant to run on `provider`: the one asked for, or for 'auto' that provider's default.

    The default follows the provider that loads, not the device asked for: on the CPU provider the CPU
    default (int8, whose integer kernels are CPU-only); on CUDA the GPU default where the export made one,
    else fp32, since dynamic int8 has no CUDA kernels and would run on the host between copies.
    """
    if asked == "auto":
        key = "default_gpu_variant" if provider == "CUDAExecutionProvider" else "default_cpu_variant"
        asked = manifest.get(key) or "fp32"
    if asked not in manifest["variants"]:
        raise ModelDirError(f"{where}: no variant {asked!r}; it has {sorted(manifest['variants'])}")
    return asked


class OrtEngine:
    """Encoder + single-step decoder sessions as the step function the shared search runs on.

    `io_binding` (default: on with the CUDA provider) keeps the decoder state in device tensors between steps.
    `use_vmap` projects each step onto the batch's vocabulary-map shortlist (`s2s.export.vmap`) instead of
    the whole target vocabulary (plain `run` on the host; not combined with I/O binding).
    `spin` lets idle onnxruntime pool threads spin-wait for the next run (onnxruntime's default). Off here:
    the encoder's and the decoder's pools each keep a spinning thread, and between steps the search's host
    code needs the core they burn; with 2 threads on 2 cores, turning it off made greedy batch-64 decoding
    1.5x (fp32) to 1.8x (int8) faster (benchmarks/run.py, decode section, measures it side by side).
    """

    def __init__(self, model_dir: ModelDir, variant: str = "auto", device: str = "auto", threads: int = 1,
                 io_binding: bool | None = None, use_vmap: bool = False, spin: bool = False):
        import onnxruntime as ort

        m = model_dir.manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = choose_providers(device)
        chosen = variant_for(m, variant, providers[0], model_dir.path)
        files = m["variants"][chosen]
        self.encoder = ort.InferenceSession(str(model_dir.file(files["encoder"])), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(model_dir.file(files["decoder_step"])), opts, providers=providers)
        self.provider = self.decoder.get_providers()[0]
        if device == "cuda" and self.provider != "CUDAExecutionProvider":
            raise DeviceError(f"--device cuda: the CUDA provider did not load (running {self.provider}); check the CUDA/cuDNN libraries")
        if variant_for(m, variant, self.provider, model_dir.path) != chosen:
            # the CUDA provider was expected but the CPU one loaded: its own default variant, on it alone
            chosen = variant_for(m, variant, self.provider, model_dir.path)
            files, providers = m["variants"][chosen], [self.provider]
            self.encoder = ort.InferenceSession(str(model_dir.file(files["encoder"])), opts, providers=providers)
            self.decoder = ort.InferenceSession(str(model_dir.file(files["decoder_step"])), opts, providers=providers)
        self.variant = variant = chosen
        self.use_vmap = use_vmap
        if use_vmap:
            if "vmap" not in m or "decoder_state" not in files:
                raise ModelDirError(f"{model_dir.path}: exported without a vocabulary map; re-export it (vmap is on by default) "
                                    "or decode without --use-vmap")
            self.state_step = ort.InferenceSession(_with_projection(model_dir.file(files["decoder_state"])), opts, providers=providers)
            with np.load(model_dir.file(m["vmap"]["file"])) as z:
                self.vmap = {k: z[k] for k in z.files}
            self.unk_eos = (m["special_ids"]["unk"], m["special_ids"]["eos"])
        cfg = m["model_config"]
        self.hidden, self.layers, self.vocab = cfg["hidden_size"], cfg["decoder_layers"], cfg["tgt_vocab_size"]
        on_cuda = self.provider == "CUDAExecutionProvider"
        self.io_binding = (on_cuda if io_binding is None else io_binding) and not use_vmap
        self.device = "cuda" if on_cuda else "cpu"
        # the export's reference sentences, decoded here on this provider and variant before any row is (full softmax)
        self.use_vmap = False
        try:
            self.checked = check_reference(self, model_dir, variant, self.provider)
        finally:
            self.use_vmap = use_vmap
        log.info("onnxruntime provider: %s (variant %s, %d thread(s)%s%s)%s", self.provider, variant, threads,
                 ", I/O binding" if self.io_binding else "", ", vocabulary map" if use_vmap else "",
                 f"; reference check: mean |delta log-prob| {self.checked['mean_abs_logprob_diff']:.2g}" if self.checked else "")

    def encode(self, src_ids: np.ndarray, src_lens: np.ndarray) -> State:
        feeds = {"src_ids": src_ids.astype(np.int64), "src_lens": src_lens.astype(np.int64)}
        if self.io_binding:
            B, S, H, L = src_ids.shape[0], src_ids.shape[1], self.hidden, self.layers
            shapes = {"memory": (B, S, H), "mask": (B, S), "h0": (B, L, H), "c0": (B, L, H), "feed0": (B, H)}
            out = self._run_bound(self.encoder, feeds, shapes)
            return {"h": out["h0"], "c": out["c0"], "feed": out["feed0"], "memory": out["memory"], "mask": out["mask"]}
        memory, mask, h, c, feed = self.encoder.run(None, feeds)
        if self.use_vmap:  # this batch's shortlist; the steps that follow project onto it only
            from s2s.export.vmap import shortlist

            self.set_shortlist(shortlist(self.vmap, src_ids, self.unk_eos))
        return {"h": h, "c": c, "feed": feed, "memory": memory, "mask": mask}

    def set_shortlist(self, ids: np.ndarray) -> None:
        """Target ids the following steps project onto (`encode` sets the batch's; the export gate, all of them)."""
        self.ids = ids
        self.weight, self.bias = self.vmap["weight"][ids], self.vmap["bias"][ids]  # rows (K, H): a gather, no transpose

    def step(self, prev: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        feeds = {"prev": prev.astype(np.int64), "h": state["h"], "c": state["c"], "feed": state["feed"], "memory": state["memory"],
                 "mask": state["mask"]}
        if self.io_binding:
            N, S, H, L = len(prev), state["mask"].shape[1], self.hidden, self.layers
            shapes = {"log_probs": (N, self.vocab), "h_out": (N, L, H), "c_out": (N, L, H), "feed_out": (N, H), "attention": (N, S)}
            out = self._run_bound(self.decoder, feeds, shapes)
            lp = out["log_probs"]  # a tensor on the device: the search reduces it there (s2s.search._candidates)
            return lp, {**state, "h": out["h_out"], "c": out["c_out"], "feed": out["feed_out"], "attention": out["attention"]}
        if self.use_vmap:
            feed, h, c, attn, lp_short = self.state_step.run(None, {**feeds, "vmap_weight": self.weight, "vmap_bias": self.bias})
            lp = np.full((len(prev), self.vocab), -np.inf, dtype=np.float32)  # tokens off the shortlist cannot be chosen
            lp[:, self.ids] = lp_short
            return lp, {**state, "h": h, "c": c, "feed": feed, "attention": attn}
        lp, h, c, feed, attn = self.decoder.run(None, feeds)
        return lp, {**state, "h": h, "c": c, "feed": feed, "attention": attn}

    def _run_bound(self, session, feeds: dict, out_shapes: dict[str, tuple[int, ...]]) -> dict:
        """Run with I/O binding: inputs and outputs are torch tensors on this engine's device, bound by pointer.

        The state between steps then never leaves the device (the search reorders it with `index_select`), nor
        do the log-probabilities: the search takes each row's top tokens there, and only those come back. On the CPU provider the same code runs (tests).
        """
        import torch

        dtypes = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64, "tensor(bool)": torch.bool}
        np_types = {torch.float32: np.float32, torch.int64: np.int64, torch.bool: np.bool_}
        binding = session.io_binding()
        keep = []  # tensors must outlive the run
        for spec in session.get_inputs():
            value = feeds[spec.name]
            t = torch.as_tensor(value).to(self.device, dtypes[spec.type]).contiguous()
            keep.append(t)
            binding.bind_input(spec.name, self.device, 0, np_types[t.dtype], tuple(t.shape), t.data_ptr())
        outs = {}
        for spec in session.get_outputs():
            t = torch.empty(out_shapes[spec.name], dtype=dtypes[spec.type], device=self.device)
            outs[spec.name] = t
            binding.bind_output(spec.name, self.device, 0, np_types[t.dtype], tuple(t.shape), t.data_ptr())
        if self.device == "cuda":
            torch.cuda.current_stream().synchronize()  # inputs made by torch kernels are ready before onnxruntime reads them
        session.run_with_iobinding(binding)
        if self.device == "cuda":
            binding.synchronize_outputs()
        return outs


def _with_projection(path: Path) -> bytes:
    """decoder_state.onnx plus the output projection onto a shortlist passed in per batch (vmap_weight (K, H),
    the generator's rows; vmap_bias (K,)) -> vmap_log_probs (B, K). A Gemm with transB takes the gathered rows
    as they are (transposing them on the host took 6 ms a batch, 20x the gather). Appended here, not at export,
    so one exported graph serves any shortlist; in the same session, because a second one (or numpy's BLAS)
    fights its threads for the cores: measured 2.7x slower that way."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    g = model.graph
    g.input.extend([helper.make_tensor_value_info("vmap_weight", TensorProto.FLOAT, ["shortlist", None]),
                    helper.make_tensor_value_info("vmap_bias", TensorProto.FLOAT, ["shortlist"])])
    g.node.extend([helper.make_node("Gemm", ["feed_out", "vmap_weight", "vmap_bias"], ["vmap_logits"], name="vmap_gemm", transB=1),
                   helper.make_node("LogSoftmax", ["vmap_logits"], ["vmap_log_probs"], name="vmap_log_softmax", axis=-1)])
    g.output.append(helper.make_tensor_value_info("vmap_log_probs", TensorProto.FLOAT, [None, "shortlist"]))
    return model.SerializeToString()


def load_translator(path: str | Path, decode: DecodeConfig | None = None, variant: str = "auto", device: str = "auto",
                    threads: int = 1, io_binding: bool | None = None) -> Translator:
    """A Translator over an exported model directory (verified), ready to translate text."""
    model_dir = load_model_dir(path)
    limits = model_dir.manifest.get("limits", {})
    decode = decode or DecodeConfig(max_input_tokens=limits.get("max_input_tokens", 250))
    engine = OrtEngine(model_dir, variant, device, threads, io_binding, decode.use_vmap)
    return Translator(engine, load_sentencepiece(model_dir.file("src.model")), load_sentencepiece(model_dir.file("tgt.model")), decode,
                      model_dir.manifest.get("length_ratio"))
