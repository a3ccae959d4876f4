"""The scheduler manifests in jobs/ are well-formed and run the job the way a scheduler must."""

import configparser
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def _translate_command(command: str) -> None:
    """A scheduled translate: the date fills both paths, the model comes from object storage, --resume."""
    assert command.startswith("s2s-job translate") and "--resume" in command
    assert "{date}" in command and "--date" in command
    assert re.search(r"--model s3://\S+", command), "the model is read from object storage"


def _resources(params: dict) -> dict:
    return json.loads(json.loads(params["resources"]))


def test_rayjob_manifest():
    job = yaml.safe_load((JOBS / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    _translate_command(spec["entrypoint"])
    assert "submitterPodTemplate" not in spec  # KubeRay's own submitter: it submits under the id the operator tracks
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # the same resource marks as ray_cluster.yaml: actors on the workers, never on the head
    from s2s.cluster import HEAD_RESOURCE, WORKER_RESOURCE

    assert _resources(cluster["headGroupSpec"]["rayStartParams"]) == {HEAD_RESOURCE: 1} and cluster["enableInTreeAutoscaling"] is True
    assert all(_resources(g["rayStartParams"]) == {WORKER_RESOURCE: 1} for g in cluster["workerGroupSpecs"])
    assert cluster["authOptions"]["mode"] == "token"
    assert {g["template"]["spec"]["serviceAccountName"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]} == {"s2s-job-ray"}


def test_cronjob_submits_nightly_one_at_a_time_and_its_exit_code_decides_retries():
    cron = yaml.safe_load((JOBS / "cronjob.yaml").read_text())
    cluster = yaml.safe_load((JOBS / "raycluster.yaml").read_text())
    assert cron["kind"] == "CronJob" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    # s2s-job submit is the process (exec), so the pod exits with the translate command's own code
    script = " ".join(container["args"])
    assert container["command"] == ["/bin/sh", "-c"] and script.startswith("exec s2s-job submit -- s2s-job translate")
    _translate_command(script.split(" -- ", 1)[1])
    assert "$(date -u -d yesterday +%F)" in script
    # 1 and 2 fail the Job, 3 is retried, a disruption is not counted; podFailurePolicy needs restartPolicy Never
    assert pod["restartPolicy"] == "Never" and job["backoffLimit"] >= 1
    actions = {}
    for rule in job["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == container["name"] and rule["onExitCodes"]["operator"] == "In"
            actions.update({code: rule["action"] for code in rule["onExitCodes"]["values"]})
        else:
            assert rule == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert actions == {1: "FailJob", 2: "FailJob", 3: "Count"}
    assert job["podFailurePolicy"]["rules"][0]["action"] == "Ignore"  # first: an evicted pod's exit 3 is not counted
    # the Jobs server of the RayCluster's head Service, with the token of its authOptions' Secret
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == f"http://{cluster['metadata']['name']}-head-svc:8265"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": cluster["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    assert pod["terminationGracePeriodSeconds"] > 30  # s2s-job submit waits up to 30 s for its stopped Ray job


def test_systemd_and_scripts_resume():
    """Every schedule goes through `s2s-job submit` (never `ray job submit`, which flattens exit codes to 0/1) with
    --resume; systemd restarts exit 3 only, a bounded number of times."""
    def _unit(name: str) -> dict[str, dict[str, str]]:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # systemd keys are case-sensitive
        parser.read_string((JOBS / name).read_text())
        return {section: dict(parser[section]) for section in parser.sections()}

    for name in ("s2s-translate@.service", "submit_translate.sh", "submit_train.sh", "README.md", "airflow_dag.py"):
        assert "ray job submit --" not in (JOBS / name).read_text(), name
    for name in ("s2s-translate@.service", "submit_translate.sh"):
        text = (JOBS / name).read_text()
        assert "--resume" in text and "s2s-job submit --working-dir . -- s2s-job translate" in text
    assert "s2s-job submit --working-dir . -- s2s-job train" in (JOBS / "submit_train.sh").read_text()
    unit = _unit("s2s-translate@.service")
    service = unit["Service"]
    assert service["Type"] == "oneshot" and service["Restart"] == "on-failure"
    assert set(service["RestartPreventExitStatus"].split()) == {"1", "2"}
    assert int(unit["Unit"]["StartLimitBurst"]) > 1 and unit["Unit"]["StartLimitIntervalSec"]
    assert service["EnvironmentFile"].startswith("/") and service["ExecStart"].startswith("/opt/s2s-job/.venv/bin/s2s-job submit ")
    assert "--no-block" in _unit("s2s-translate-nightly.service")["Service"]["ExecStart"]
    timer = _unit("s2s-translate.timer")["Timer"]
    assert timer["OnCalendar"] and timer["Persistent"] == "true" and timer["Unit"] == "s2s-translate-nightly.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    """systemd itself accepts the units (it refuses Restart= other than no or on-failure on a oneshot service)."""
    for name in ("s2s-translate@.service", "s2s-translate-nightly.service", "s2s-translate.timer"):
        text = (JOBS / name).read_text().replace("/opt/s2s-job/.venv/bin/s2s-job", "/bin/true").replace("/opt/s2s-job", "/tmp")
        (tmp_path / name.replace("@.", "@2026-11-21.")).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def _load_dag(monkeypatch) -> tuple[types.ModuleType, dict]:
    """jobs/airflow_dag.py, imported against a stand-in for the few Airflow names it uses (Airflow is not a test
    dependency): the stand-ins record how the task and the DAG are declared and called."""
    seen: dict = {}

    class AirflowException(Exception):
        pass

    class AirflowFailException(AirflowException):
        pass

    def task(**settings):
        def wrap(fn):
            def call(**kwargs):
                seen["call"] = kwargs
            call.function, seen["task"] = fn, settings
            return call
        return wrap

    def dag(**settings):
        seen["dag"] = settings
        return lambda fn: fn

    sdk = types.ModuleType("airflow.sdk")
    sdk.dag, sdk.task = dag, task
    exceptions = types.ModuleType("airflow.sdk.exceptions")
    exceptions.AirflowException, exceptions.AirflowFailException = AirflowException, AirflowFailException
    interval = types.ModuleType("airflow.timetables.interval")
    interval.CronDataIntervalTimetable = lambda cron, timezone: ("cron-data-interval", cron, timezone)
    for name, module in {"airflow": types.ModuleType("airflow"), "airflow.sdk": sdk, "airflow.sdk.exceptions": exceptions,
                         "airflow.timetables": types.ModuleType("airflow.timetables"), "airflow.timetables.interval": interval}.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("s2s_airflow_dag", JOBS / "airflow_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, seen


def test_airflow_dag_retries_3_and_fails_1_and_2_at_once(monkeypatch, tmp_path):
    dag, seen = _load_dag(monkeypatch)
    assert seen["dag"]["schedule"] == ("cron-data-interval", "0 2 * * *", "UTC") and seen["dag"]["catchup"] is False
    assert seen["call"] == {"day": "{{ ds }}"}  # the logical date's partition
    assert seen["task"]["retries"] >= 1 and seen["task"]["retry_delay"].total_seconds() > 0
    assert dag.SUBMIT[0].endswith("jobs/submit_translate.sh") and "{date}" in dag.SUBMIT[1] and "{date}" in dag.SUBMIT[2]

    # the task itself, on a wrapper that exits with each code: what Airflow is told
    fake = tmp_path / "submit.sh"
    fake.write_text('#!/bin/sh\n[ "$MODEL" ] && [ "$2" = --date ] && [ "$3" = 2026-11-21 ] || exit 99\nexit "$1"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(dag, "CHECKOUT", str(tmp_path))
    for code in (0, 1, 2, 3):
        monkeypatch.setattr(dag, "SUBMIT", [str(fake), str(code)])
        if code == 0:
            dag.translate.function("2026-11-21")
            continue
        with pytest.raises(sys.modules["airflow.sdk.exceptions"].AirflowException) as raised:
            dag.translate.function("2026-11-21")
        failed_for_good = isinstance(raised.value, sys.modules["airflow.sdk.exceptions"].AirflowFailException)
        assert failed_for_good == (code in (1, 2)), (code, raised.value)
    assert [dag.outcome(c) for c in (0, 1, 2, 3, 137)] == ["success", "fail", "fail", "retry", "retry"]
