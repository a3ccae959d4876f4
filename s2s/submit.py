"""Submit an s2s-job command as a Ray job and exit with the command's own exit code.

`ray job submit` exits 0 when the job succeeded and 1 otherwise, so a scheduler behind it cannot tell
"the error rate is over the gate" (1: a rerun gives the same answer) from "bad invocation" (2: fix the
call) or "the run failed" (3: retry with --resume). This module submits through Ray's Job SDK instead,
streams the job's log, and maps the job's end to the codes `s2s-job translate` documents:

    SUCCEEDED                                      0
    FAILED, the command exited 1, 2 or 3           that code
    FAILED otherwise, or STOPPED                   3: the driver was killed, its runtime env or node failed,
                                                   or the job was stopped; a rerun with --resume finishes it
    the Jobs server unreachable                    3: the cluster may be back on the next try
    no address, a refused token, bad --working-dir 2: configuration that a retry cannot fix

Token authentication works as for `ray job submit`: Ray's client sends `Authorization: Bearer ...` where
RAY_AUTH_MODE=token and the token is in RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or
~/.ray/auth_token. A scheduler killed while waiting (SIGINT, SIGTERM) stops the job, so that no run is left
behind holding the output's lease, and exits 3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from typing import Iterator

POLL_SECONDS = 1.0
LOST_CONTACT_SECONDS = 120.0  # how long the status may stay unreadable (a dashboard restart) before the outcome is unknown
STOP_WAIT_SECONDS = 30.0  # after a stop request, how long to wait for the job to end before exiting anyway


def exit_code(status: str, driver_exit_code: int | None) -> int:
    """The scheduler's exit code for a finished Ray job: its command's code where that is one of ours, else 3."""
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED" and driver_exit_code in (1, 2, 3):
        return driver_exit_code
    return 3


def _say(message: str) -> None:
    print(f"s2s-job submit: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, Kubernetes, Airflow's on_kill) raises KeyboardInterrupt, as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def submit_job(command: list[str], address: str | None, working_dir: str | None) -> int:
    """Run `command` as a Ray job on the cluster at `address` (default: RAY_ADDRESS); return its exit code.

    A refused token returns 2, not 3: the token in the environment is wrong or missing, and retrying with
    the same environment is refused again; an unreachable server returns 3, as the cluster may come back."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    if not command:
        _say("no command: s2s-job submit [--address URL] [--working-dir DIR] -- s2s-job translate ...")
        return 2
    # Ray's client lets RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, override its address argument: make the chosen one win
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        _say("no Ray Jobs server: pass --address http://HEAD:8265 or set RAY_ADDRESS")
        return 2
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    os.environ["RAY_ADDRESS"] = address
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=shlex.join(command), runtime_env={"working_dir": working_dir} if working_dir else None)
    except AuthenticationError as e:
        _say(f"{address} refused the token (set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the cluster's token): {e}")
        return 2
    except (ValueError, TypeError) as e:  # a malformed address, a missing or too large --working-dir
        _say(f"cannot submit: {e}")
        return 2
    except Exception as e:  # noqa: BLE001 - unreachable, or the server failed the request: never exit 1, which means the gate
        _say(f"cannot submit to {address}: {e}")
        return 3
    _say(f"submitted job {job_id} to {address}: {shlex.join(command)}")
    with _sigterm_as_interrupt():
        try:
            info = _wait(client, job_id)
        except KeyboardInterrupt:
            _stop(client, job_id)
            return 3
    if info is None:
        _say(f"lost contact with {address}; job {job_id}'s outcome is unknown (`ray job status {job_id}`)")
        return 3
    status = info.status.value
    code = exit_code(status, info.driver_exit_code)
    if code == 0:
        _say(f"job {job_id} succeeded")
    elif status == "FAILED" and info.driver_exit_code == code:
        _say(f"job {job_id} failed: the command exited {code}")
    else:  # Ray's message can hold the last 20,000 characters of the log: keep its first line
        why = (info.message or "").strip().splitlines()[:1] or ["no message"]
        _say(f"job {job_id} {status} (driver exit code {info.driver_exit_code}): {why[0]}; exit 3, retry with --resume")
    return code


async def _print_log(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        sys.stdout.write(lines)
        sys.stdout.flush()


def _wait(client, job_id: str):
    """Stream the job's log until it ends; return its JobDetails, or None where the server stayed unreachable."""
    try:
        asyncio.run(_print_log(client, job_id))
    except Exception as e:  # noqa: BLE001 - the log stream broke; the job goes on, so keep following its status
        _say(f"log stream of job {job_id} broke ({e}); waiting for the job without it")
    last_seen = time.monotonic()
    while True:
        try:
            info = client.get_job_info(job_id)
            last_seen = time.monotonic()
            if info.status.is_terminal():
                return info
        except Exception:  # noqa: BLE001 - a dashboard restart, a network blip: the job may still be running
            if time.monotonic() - last_seen > LOST_CONTACT_SECONDS:
                return None
        time.sleep(POLL_SECONDS)


def _stop(client, job_id: str) -> None:
    """Stop the job and wait a little for it to end; a second interrupt gives up waiting."""
    _say(f"interrupted: stopping job {job_id}")
    try:
        client.stop_job(job_id)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while time.monotonic() < deadline and not client.get_job_status(job_id).is_terminal():
            time.sleep(POLL_SECONDS)
        _say(f"job {job_id} {client.get_job_status(job_id).value}; exit 3, retry with --resume")
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - exit 3 whatever happens here
        _say(f"could not confirm that job {job_id} stopped ({e or 'interrupted'}): check `ray job status {job_id}`")
