"""The scheduler manifests in jobs/ are well-formed and run the job the way a scheduler must."""

from pathlib import Path

import yaml

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def test_rayjob_manifest():
    job = yaml.safe_load((JOBS / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("s2s-job translate") and "--resume" in spec["entrypoint"]
    assert "{date}" in spec["entrypoint"] and "--date" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # the same resource marks as ray_cluster.yaml: actors on the workers, never on the head
    import json

    from s2s.cluster import HEAD_RESOURCE, WORKER_RESOURCE

    head = json.loads(json.loads(cluster["headGroupSpec"]["rayStartParams"]["resources"]))
    assert head == {HEAD_RESOURCE: 1} and cluster["enableInTreeAutoscaling"] is True
    assert all(json.loads(json.loads(g["rayStartParams"]["resources"])) == {WORKER_RESOURCE: 1} for g in cluster["workerGroupSpecs"])


def test_cronjob_creates_the_rayjob_nightly_one_at_a_time():
    cron = yaml.safe_load((JOBS / "cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    args = " ".join(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "kubectl create -f" in args and "RUN_DATE" in args


def test_systemd_and_scripts_resume():
    for name in ("s2s-translate@.service", "submit_translate.sh"):
        assert "--resume" in (JOBS / name).read_text()
    timer = (JOBS / "s2s-translate.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
