"""Airflow DAG: every night, translate the day that just ended on the Ray cluster (Airflow 2.4+ and 3.x).

The task runs jobs/submit_translate.sh, which exits with the translate run's own code (s2s-job submit), and
turns that code into Airflow's outcome: 3 (the run failed, or another run holds the output) is retried
after `retry_delay`, with --resume, so committed shards are kept; 1 (error rate over the gate) and 2 (bad
invocation) fail at once with AirflowFailException, as a retry gives the same answer.

The worker's environment holds RAY_ADDRESS=http://ray-head:8265, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN
(from the deployment's secrets); /opt/s2s-job is a checkout of this repository with its virtual environment.
"""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import dag, task
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError:  # Airflow 2
    from airflow.decorators import dag, task
    from airflow.exceptions import AirflowException, AirflowFailException
from airflow.timetables.interval import CronDataIntervalTimetable

CHECKOUT = "/opt/s2s-job"
SUBMIT = [f"{CHECKOUT}/jobs/submit_translate.sh", "s3://my-bucket/corpus/date={date}/", "s3://my-bucket/translations/date={date}/"]
MODEL = "s3://my-bucket/s2s-job/models/eng-fra"


def outcome(code: int) -> str:
    """What Airflow does with the wrapper's exit code: "success", "fail" (no retry) or "retry"."""
    if code == 0:
        return "success"
    if code in (1, 2):  # the error-rate gate, or the call itself: a rerun gives the same answer
        return "fail"
    return "retry"  # 3, or the wrapper killed: the run can finish on a later try


@task(retries=4, retry_delay=timedelta(minutes=15))
def translate(day: str) -> None:
    env = {**os.environ, "MODEL": MODEL, "PATH": f"{CHECKOUT}/.venv/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    run = subprocess.Popen([*SUBMIT, "--date", day], cwd=CHECKOUT, env=env)
    try:
        code = run.wait()
    except BaseException:  # Airflow is killing the task (timeout, marked failed): let s2s-job submit stop the Ray job
        run.terminate()
        run.wait(60)
        raise
    what = outcome(code)
    if what == "fail":
        raise AirflowFailException(f"s2s-job translate for {day} exited {code}: not retried (see the log above)")
    if what == "retry":
        raise AirflowException(f"s2s-job translate for {day} exited {code}: retried with --resume")


# ds is the start of the data interval: at 02:00 UTC the run covers the day that just ended. An explicit
# CronDataIntervalTimetable keeps that meaning on Airflow 3, whose plain cron schedules set ds to the run's own day.
@dag(schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"), start_date=datetime(2026, 11, 1), catchup=False,
     max_active_runs=1, tags=["s2s-job"])
def s2s_translate_nightly() -> None:
    translate(day="{{ ds }}")


s2s_translate_nightly()
