"""Faults for the translate job's tests, injected from outside the production code.

A test puts this folder on the PYTHONPATH of an `s2s-job translate` subprocess and names a fault in
S2S_TEST_FAULT. Python runs this file at the start of that process and of every worker Ray starts for it
(they inherit the environment); once the targeted module is imported, its class is wrapped:

    slow:<seconds>           every Translator.translate call sleeps first, so that a kill lands mid-run
    die_once:<marker>        the first translate call of the run kills its process (as a lost node would)
    poison:<text>            a translate call whose texts contain <text> kills its process, every time
    broken_engine:<marker>   the first actor to translate gets an engine whose every step raises, as on a failed device
"""

import importlib.abc
import os
import sys
import time

KIND, _, ARG = os.environ.get("S2S_TEST_FAULT", "").partition(":")


def _first(marker: str) -> bool:
    """True in exactly one process: the one that creates the marker file."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _patch_translator(module) -> None:
    original = module.Translator.translate

    def translate(self, texts):
        if KIND == "slow":
            time.sleep(float(ARG))
        if KIND == "die_once" and _first(ARG):
            os._exit(1)
        if KIND == "poison" and any(ARG.encode() in (t.encode() if isinstance(t, str) else t or b"") for t in texts):
            os._exit(1)
        return original(self, texts)

    module.Translator.translate = translate


def _patch_engine(module) -> None:
    original = module.OrtEngine.step
    broken = []  # decided at this process's first step

    def step(self, prev, state):
        if not broken:
            broken.append(_first(ARG))
        if broken[0]:
            raise RuntimeError("CUDA failure 999: unspecified launch failure (injected)")
        return original(self, prev, state)

    module.OrtEngine.step = step


PATCHES = {"slow": ("s2s.translator", _patch_translator), "die_once": ("s2s.translator", _patch_translator),
           "poison": ("s2s.translator", _patch_translator), "broken_engine": ("s2s.export.runtime", _patch_engine)}


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


if KIND in PATCHES:
    sys.meta_path.insert(0, _PatchOnImport(*PATCHES[KIND]))
