"""Faults for the translate job's tests, injected from outside the production code.

A test puts this folder on the PYTHONPATH of an `s2s-job translate` subprocess and names faults in
S2S_TEST_FAULT, comma-separated. Python runs this file at the start of that process and of every worker Ray
starts for it (they inherit the environment); once the targeted module is imported, its class is wrapped:

    slow:<seconds>                every Translator.translate call sleeps first, so that a kill lands mid-run
    die_once:<marker>             the first translate call of the run kills its process (as a lost node would)
    poison:<text>                 a translate call whose texts contain <text> kills its process, every time
    broken_engine:<marker>        the first process to translate gets an engine whose every step raises, as on a failed device
    broken_engine_once:<marker>   the first engine made (in any process) fails every step; engines made after it work
    fake_cuda                     onnxruntime's CUDA provider "loads" in processes Ray gave a GPU (computing on the CPU)
    echo                          Translator.translate answers "T:" + the text itself (or its error) without the
                                  model: exact and fast, so that a test can check each row holds its own text's translation
"""

import importlib.abc
import os
import sys
import time

FAULTS = [f.partition(":")[::2] for f in os.environ.get("S2S_TEST_FAULT", "").split(",") if f]


def _first(marker: str) -> bool:
    """True in exactly one process: the one that creates the marker file."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _patch_translator(module, kind, arg) -> None:
    original = module.Translator.translate

    def translate(self, texts, prefixes=None):
        if kind == "slow":
            time.sleep(float(arg))
        if kind == "die_once" and _first(arg):
            os._exit(1)
        if kind == "poison" and any(arg.encode() in (t.encode("utf-8", "surrogatepass") if isinstance(t, str) else t or b"")
                                    for t in texts):
            os._exit(1)
        if kind == "echo":
            out = []
            for value in texts:
                text, error = module.as_text(value)
                out.append(module.Translation(None, None, 0, 0, error=error) if error else
                           module.Translation("T:" + text, -1.0, len(text), len(text) + 2))
            return out
        return original(self, texts, prefixes)

    module.Translator.translate = translate


def _patch_engine(module, kind, arg) -> None:
    step, init = module.OrtEngine.step, module.OrtEngine.__init__
    broken = []  # broken_engine: decided at this process's first step

    def new_init(self, *a, **kw):
        self._loading = True  # the engine's own reference check at load runs unbroken: these faults break translation
        init(self, *a, **kw)
        self._loading = False
        self._broken = kind == "broken_engine_once" and _first(arg)

    def new_step(self, prev, state):
        if getattr(self, "_loading", False):
            return step(self, prev, state)
        if kind == "broken_engine" and not broken:
            broken.append(_first(arg))
        if (broken and broken[0]) or getattr(self, "_broken", False):
            raise RuntimeError("CUDA failure 999: unspecified launch failure (injected)")
        return step(self, prev, state)

    module.OrtEngine.__init__, module.OrtEngine.step = new_init, new_step


def _patch_cuda(module, kind, arg) -> None:
    """fake_cuda: in a process Ray gave a GPU (CUDA_VISIBLE_DEVICES names one, read when the engine is made),
    onnxruntime reports its CUDA provider loaded when asked for it, as onnxruntime-gpu on a GPU node would.
    The computation stays on the CPU, without I/O binding (which would need torch's CUDA)."""
    import onnxruntime as ort

    choose, init, session = module.choose_providers, module.OrtEngine.__init__, ort.InferenceSession

    def has_gpu() -> bool:
        return bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())

    def choose_providers(device):
        if device != "cpu" and has_gpu():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return choose(device)

    class Session(session):
        def __init__(self, path, opts=None, providers=None, **kw):
            self._cuda = "CUDAExecutionProvider" in (providers or [])
            super().__init__(path, opts, providers=["CPUExecutionProvider"], **kw)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self._cuda else ["CPUExecutionProvider"]

    def new_init(self, model_dir, variant="auto", device="auto", threads=1, io_binding=None, use_vmap=False, spin=False):
        init(self, model_dir, variant, device, threads, False if has_gpu() else io_binding, use_vmap, spin)

    module.choose_providers, module.OrtEngine.__init__, ort.InferenceSession = choose_providers, new_init, Session


TARGETS = {"fake_cuda": ("s2s.engine", _patch_cuda), "slow": ("s2s.translator", _patch_translator), "die_once": ("s2s.translator", _patch_translator),
           "poison": ("s2s.translator", _patch_translator), "echo": ("s2s.translator", _patch_translator),
           "broken_engine": ("s2s.engine", _patch_engine), "broken_engine_once": ("s2s.engine", _patch_engine)}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, name, patch):
        self.name, self.patch = name, patch

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            self.patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


def _patches_for(module_name):
    """Every fault named for this module, applied in the order given (the last one wraps outermost)."""
    chosen = [(TARGETS[kind][1], kind, arg) for kind, arg in FAULTS if TARGETS[kind][0] == module_name]

    def patch(module):
        for fn, kind, arg in chosen:
            fn(module, kind, arg)

    return patch


for name in dict.fromkeys(TARGETS[kind][0] for kind, _ in FAULTS):  # one finder per module: two would call each other
    sys.meta_path.insert(0, _PatchOnImport(name, _patches_for(name)))
