"""The translating side of a run: one bad row costs only itself, a failed engine is never blamed on rows.

`SafeTranslator` wraps a Translator for both the Ray job's actors and the runs in one process (text files,
stdin, `--executor local`):

- a batch that raises is split until the failing rows are found, each flagged with its exception;
- a failure that is not the rows' (a lost device, a broken session) shows as a canary text failing too:
  `EngineFailed` is raised instead of flagging every row. In one process the engine is then loaded
  afresh and the rows retried; a Ray actor exits, so that Ray Data starts a fresh one and retries its unit.

`TranslateBatch` is the Ray Data actor. A row that kills its process (a crash in native code) would have
Ray Data restart the actor and retry forever, so each unit keeps a record of its starts that never
finished (`UnitAttempts`, in the run's staging folder). After ISOLATE_AFTER deaths the unit is translated
one row at a time, each recorded as in flight first: the row in flight when the actor died again is
flagged on the next start instead of translated. The run tolerates as many such rows in one unit as its
error gate allows over the whole run (`poison_limit`); a unit that needs more stops the run, naming the
rows it flagged and the one it could not get past.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from s2s.progress import say
from s2s.storage import delete_object_if, is_s3, put_object_if, s3_read, write_local
from s2s.translator import Translation, Translator

CANARY = "a"  # a text any model translates: when it fails too, the engine is broken, not the row
ISOLATE_AFTER = 2  # deaths of a unit's actor before its rows are translated one at a time
MAX_ENGINE_FAILURES = 3  # fresh engines (or actors) that failed on one unit before the run stops


class EngineFailed(RuntimeError):
    """The engine fails even on a canary text: the fault is the engine's (device, session), not the rows'."""


class SafeTranslator:
    """A Translator whose batches fail row by row (see the module docstring)."""

    def __init__(self, translator: Translator):
        self.translator = translator

    def translate(self, texts: list[Any], prefixes: list[str | None] | None = None) -> list[Translation]:
        try:
            return self.translator.translate(texts, prefixes)
        except Exception as e:  # noqa: BLE001 - one bad row must not cost the others
            try:
                self.translator.translate([CANARY])
            except Exception:  # noqa: BLE001
                raise EngineFailed(f"{type(e).__name__}: {e}") from e
            if len(texts) == 1:
                return [Translation(None, None, 0, 0, error=f"{type(e).__name__}: {e}")]
            mid = len(texts) // 2
            halves = (prefixes[:mid], prefixes[mid:]) if prefixes is not None else (None, None)
            return self.translate(texts[:mid], halves[0]) + self.translate(texts[mid:], halves[1])


def translate_here(load: Callable[[], Translator], texts: list[Any], state: dict, prefixes: list[str | None] | None = None) -> list[Translation]:
    """In one process: translate, loading the engine afresh when it fails, up to MAX_ENGINE_FAILURES times.

    `state` keeps the translator between calls ("translator") and counts the failures ("engine_failures")."""
    while True:
        if state.get("translator") is None:
            state["translator"] = SafeTranslator(load())
        try:
            return state["translator"].translate(texts, prefixes)
        except EngineFailed as e:
            state["engine_failures"] = state.get("engine_failures", 0) + 1
            state["translator"] = None
            if state["engine_failures"] >= MAX_ENGINE_FAILURES:
                raise RuntimeError(f"the translation engine failed {state['engine_failures']} times, each time on a fresh "
                                   f"engine: {e}") from e
            say(f"the engine itself fails ({e}); loading it afresh and translating those rows again")


# ---------------------------------------------------------------- the Ray actor


def _read_record(path: str) -> dict | None:
    if is_s3(path):
        got = s3_read(path)
        return json.loads(got[0]) if got else None
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


class UnitAttempts:
    """How often a unit was started on an actor without finishing: a record in the run's staging folder."""

    def __init__(self, path: str):
        self.path = path
        self.record: dict = {}

    def start(self) -> dict:
        rec = _read_record(self.path) or {"starts": 0, "engine_failures": 0, "poison": [], "in_flight": None}
        if rec["in_flight"] is not None:
            rec["poison"].append(rec["in_flight"])
            rec["in_flight"] = None
        rec["deaths"] = rec["starts"] - rec["engine_failures"]  # every earlier start ended without finishing
        rec["starts"] += 1
        self.record = rec
        self.save()
        return rec

    def save(self) -> None:
        data = json.dumps(self.record).encode()
        if is_s3(self.path):
            put_object_if(self.path, data)
        else:
            write_local(self.path, data)  # fails where the staging folder was revoked: the run lost its lease

    def finish(self) -> None:
        if is_s3(self.path):
            delete_object_if(self.path)
        else:
            Path(self.path).unlink(missing_ok=True)


class TranslateBatch:
    """Ray Data actor: loads the model directory once, then translates whole units (one row per unit)."""

    def __init__(self, model: str, attempts: str, decode, variant: str, device: str, threads: int, relay, poison_limit: int):
        import ray

        from s2s.engine import load_translator

        self.relay, self.attempts_template, self.poison_limit = relay, attempts, poison_limit
        self.translator = SafeTranslator(load_translator(model, decode, variant, device, threads))
        engine = self.translator.translator.engine
        self.provider, self.variant, self.decode = engine.provider, engine.variant, decode
        self.node = ray.get_runtime_context().get_node_id()
        self.gpus = [str(g) for g in ray.get_gpu_ids()]  # the GPUs Ray gave this actor (CUDA_VISIBLE_DEVICES)
        self.say(f"translate actor pid {os.getpid()}: onnxruntime provider {self.provider}, variant {self.variant}"
                 f"{' with the vocabulary map' if engine.use_vmap else ''}, {threads} thread(s)"
                 f"{f', GPU {chr(44).join(self.gpus)}' if self.gpus else ''}")

    def say(self, line: str) -> None:
        """A line for people, through the driver's relay (s2s.progress.Relay), which prints it as is; Ray would
        print it with the actor's name and pid in front. Waited for: the actor may exit right after."""
        import ray

        try:
            ray.get(self.relay.say.remote(line), timeout=10)
        except Exception:  # noqa: BLE001 - the relay is gone: the line still reaches Ray's log forwarding
            say(line)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for unit in batch.to_pylist():
            results = self._translate_unit(unit, unit.pop("texts"), unit.pop("prefixes", None))
            rows.append({**unit, **results_columns(results, self.decode), "provider": self.provider, "variant": self.variant,
                         "node": self.node, "gpus": ",".join(self.gpus)})
        return pa.Table.from_pylist(rows)

    def _translate_unit(self, unit: dict, texts: list, prefixes: list | None = None) -> list[Translation]:
        self.attempts = UnitAttempts(self.attempts_template.format(name=unit["name"]))
        self.where = f"{unit['path']} rows {unit['start']}..{unit['stop']}"
        rec = self.attempts.start()
        try:
            results = (self.translator.translate(texts, prefixes) if rec["deaths"] < ISOLATE_AFTER else
                       self._isolate(texts, rec, unit["start"], prefixes))
        except EngineFailed as e:
            self._engine_failed(e)
        self.attempts.finish()
        return results

    def _isolate(self, texts: list, rec: dict, first_row: int, prefixes: list | None = None) -> list[Translation]:
        """One row at a time, each marked in flight first, skipping the rows that killed earlier attempts."""
        flagged = ", ".join(str(first_row + i) for i in rec["poison"]) or "none"
        if len(rec["poison"]) > self.poison_limit:
            raise RuntimeError(f"{self.where}: {len(rec['poison'])} rows each killed the translate actor's process (rows {flagged}), "
                               f"more than the {self.poison_limit} the error gate allows in the whole run; the unit cannot finish. "
                               "Take those rows out of the input, or raise --max-error-rate, and rerun with --resume.")
        if rec["deaths"] > ISOLATE_AFTER + len(rec["poison"]) + 2:
            raise RuntimeError(f"{self.where}: its actor died {rec['deaths']} times with no row in flight (rows flagged: {flagged}); "
                               "the machine or the model, not the rows, looks broken. Rerun with --resume.")
        self.say(f"translate actor pid {os.getpid()}: {self.where} killed its actor {rec['deaths']} times; "
                 f"translating it row by row ({len(rec['poison'])} row(s) flagged so far: {flagged})")
        results = []
        for i, text in enumerate(texts):
            if i in rec["poison"]:
                results.append(Translation(None, None, 0, 0, error=f"row crashed the translate actor's process; flagged after "
                                                                   f"{rec['deaths']} attempts instead of translated"))
                continue
            rec["in_flight"] = i
            self.attempts.save()
            results += self.translator.translate([text], None if prefixes is None else [prefixes[i]])
        return results

    def _engine_failed(self, error: EngineFailed) -> None:
        rec = self.attempts.record
        rec["engine_failures"] += 1
        rec["in_flight"] = None
        self.attempts.save()
        if rec["engine_failures"] >= MAX_ENGINE_FAILURES:
            raise RuntimeError(f"the translation engine failed in {rec['engine_failures']} fresh actors on {self.where}: {error}") from error
        self.say(f"translate actor pid {os.getpid()}: the engine itself fails ({error}); "
                 "exiting so that Ray starts a fresh actor and retries the unit")
        os._exit(75)  # a crash, not a clean exit: Ray Data restarts the actor and retries its task


def results_columns(results: list[Translation], decode) -> dict[str, list]:
    """A unit's results as one list per result column (what the commit joins to the input rows); the optional
    columns as the decode settings (a DecodeConfig) ask for them."""
    out = {"translation": [r.translation for r in results], "score": [r.score for r in results],
           "src_tokens": [r.src_tokens for r in results], "tgt_tokens": [r.tgt_tokens for r in results],
           "error": [r.error for r in results]}
    if decode.nbest > 1:
        out["nbest"] = [[{"translation": t, "score": s} for t, s in r.nbest] for r in results]
    if decode.return_token_scores:
        out["token_scores"] = [r.token_scores for r in results]
    if decode.return_alignment:
        out["alignment"] = [r.alignment for r in results]
    if decode.check_rows:
        out["flags"], out["first_flags"] = [r.flags for r in results], [r.first_flags for r in results]
    if decode.glossary:
        out["terms_required"], out["terms_met"] = [r.terms_required for r in results], [r.terms_met for r in results]
    return out

