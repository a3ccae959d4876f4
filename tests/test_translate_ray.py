"""The translate job end to end on local Ray with 2 CPUs: order, ids, bad rows, resume, a dead actor."""

import json
import os
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s.export.runtime import ModelDirError, choose_providers, cuda_available, load_translator
from s2s.translate import JobError, TranslateConfig, run_translate
from s2s.translator import DecodeConfig

FAST = DecodeConfig(max_decoding_length=30)  # the tiny model rarely says EOS: keep its outputs short


def _output(path):
    parts = sorted(p for p in os.listdir(path) if p.startswith("part-"))
    return pa.concat_tables([pq.read_table(path / p) for p in parts]), parts


@pytest.fixture(scope="module")
def ray_2cpus():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_translate_end_to_end(tiny_model_dir, corpus_300, tmp_path, ray_2cpus):
    signal.alarm(600)  # a hang on 2 CPUs fails the test instead of stalling CI
    try:
        summary = run_translate(TranslateConfig(input=str(corpus_300), output=str(tmp_path / "out"), model=str(tiny_model_dir),
                                                decode=FAST, rows_per_shard=100))
    finally:
        signal.alarm(0)
    table, parts = _output(tmp_path / "out")
    rows = table.to_pylist()
    assert len(parts) == 3 and table.num_rows == 300
    assert [r["row_id"] for r in rows] == [f"corpus.parquet#{i}" for i in range(300)]  # every row once, in order
    assert [r["keep"] for r in rows] == list(range(300))  # pass-through column untouched
    errors = {r["keep"]: r["error"] for r in rows if r["error"]}
    assert errors == {5: "null text", 7: "empty or whitespace-only text",
                      9: "input has 400 tokens, over max_input_tokens=250 (truncate or raise the limit)"} or (
        set(errors) == {5, 7, 9} and errors[9].startswith("input has"))
    assert all(r["translation"] is not None and r["score"] < 0 for r in rows if not r["error"])
    # the actors translate exactly as the translator does in-process
    direct = load_translator(tiny_model_dir, FAST, device="cpu").translate([rows[i]["text"] for i in (0, 1, 50, 299)])
    assert [d.translation for d in direct] == [rows[i]["translation"] for i in (0, 1, 50, 299)]
    saved = json.loads((tmp_path / "out" / "_run.json").read_text())
    assert saved["rows"] == 300 and saved["errors"] == 3 and saved["complete"] and saved["providers"] == ["CPUExecutionProvider"]
    assert saved["status"] == "complete" and (tmp_path / "out" / "_SUCCESS").exists()
    assert summary["phase_seconds"] == saved["phase_seconds"] and set(saved["phase_seconds"]) == {"prepare_s", "ray_start_s", "translate_s"}
    assert sum(saved["phase_seconds"].values()) <= saved["wall_seconds"] + 0.05  # the phases are parts of the run's wall time
    assert saved["decode"]["use_vmap"] is False  # opt-in: on the CPU the int8 step is faster with the full projection
    assert saved["error_kinds"] == {"null text": 1, "empty or whitespace-only text": 1, "input over max_input_tokens": 1}
    # the same run again is a no-op that says so and keeps _run.json as it was
    before = (tmp_path / "out" / "_run.json").read_bytes()
    again = run_translate(TranslateConfig(input=str(corpus_300), output=str(tmp_path / "out"), model=str(tiny_model_dir),
                                          decode=FAST, rows_per_shard=100, resume=True))
    assert again["nothing_to_do"] and again["rows"] == 300
    assert (tmp_path / "out" / "_run.json").read_bytes() == before and len(_output(tmp_path / "out")[1]) == 3
    # nbest adds a list column
    run_translate(TranslateConfig(input=str(corpus_300), output=str(tmp_path / "nbest"), model=str(tiny_model_dir),
                                  decode=DecodeConfig(beam_size=2, nbest=2, max_decoding_length=20), rows_per_shard=300))
    nb, _ = _output(tmp_path / "nbest")
    first = nb.to_pylist()[0]
    assert len(first["nbest"]) == 2 and first["nbest"][0]["translation"] == first["translation"]


def test_bad_runs_say_why_at_once(tiny_model_dir, corpus_300, tmp_path):
    def run(**kw):
        base = dict(input=str(corpus_300), output=str(tmp_path / "o"), model=str(tiny_model_dir))
        return run_translate(TranslateConfig(**{**base, **kw}))

    with pytest.raises(JobError, match="nothing.parquet: no such input"):
        run(input=str(tmp_path / "nothing.parquet"))
    with pytest.raises(JobError, match=r"no column 'sentence'; it has \['text', 'keep'\].*--text-column"):
        run(text_column="sentence")
    corrupt = tmp_path / "shards"
    corrupt.mkdir()
    pq.write_table(pa.table({"text": ["fine"]}), corrupt / "a.parquet")
    (corrupt / "b.parquet").write_bytes(b"not parquet")
    with pytest.raises(JobError, match=r"b\.parquet: not a readable Parquet file"):
        run(input=str(corpus_300.parent.parent / corrupt.parent.name / "shards"))
    with pytest.raises(ModelDirError, match="manifest.json: missing"):
        run(model=str(tmp_path))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "something").write_text("x")
    with pytest.raises(JobError, match="not empty.*--resume.*--overwrite"):
        run()


def test_device_cuda_fails_at_once_where_cuda_cannot_load(tiny_model_dir):
    ok, why = cuda_available()
    if ok:
        assert choose_providers("cuda")[0] == "CUDAExecutionProvider"
    else:
        with pytest.raises(RuntimeError, match="--device cuda"):
            choose_providers("cuda")
        with pytest.raises(RuntimeError, match="--device cuda"):  # the job stops before Ray starts
            run_translate(TranslateConfig(input="nowhere.parquet", output="never", model=str(tiny_model_dir), device="cuda"))
        assert choose_providers("auto") == ["CPUExecutionProvider"]


@pytest.mark.parametrize("nodes,cpus_per_actor,expected", [
    ([2.0], 0.0, (2, 0.75, 1)),  # this dev machine: two 1-thread actors, half a CPU left for reads and commits
    ([16.0], 0.0, (16, 0.96875, 1)),
    ([16.0], 2.0, (7, 2.0, 2)),
    ([4.0, 32.0], 0.0, (35, 0.984375, 1)),  # 3 on the small node, 32 on the big one
    ([1.0], 0.0, (1, 0.5, 1)),
])
def test_actor_pool_always_leaves_room_for_io(nodes, cpus_per_actor, expected):
    from s2s.translate import IO_RESERVE, IO_TASK_CPUS, size_actor_pool

    cfg = TranslateConfig(input="x", output="y", cpus_per_actor=cpus_per_actor)
    actors, per, threads = size_actor_pool(cfg, nodes, [0.0] * len(nodes))
    assert (actors, per, threads) == expected
    # placed node by node, every node still has room for a read task and a commit task
    for c in nodes:
        on_node = int((c - IO_RESERVE) / per + 1e-9)
        assert c - on_node * per >= 2 * IO_TASK_CPUS


def test_gpu_actor_pool_counts_gpus():
    from s2s.translate import size_actor_pool

    cfg = TranslateConfig(input="x", output="y", gpus_per_actor=0.5)
    assert size_actor_pool(cfg, [8.0, 8.0], [1.0, 1.0]) == (4, 1.0, 1)
