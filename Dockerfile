# The s2s-job image: the CLI, Ray and onnxruntime, for every pod of the Kubernetes manifests in jobs/
# (Ray head and workers, the nightly `s2s-job submit`). Two targets from one base:
#
#   docker build --target cpu  -t my-registry/s2s-job:0.1.0-cpu .    # torch's CPU wheel; translate on the CPU provider
#   docker build --target cuda -t my-registry/s2s-job:0.1.0-cuda .   # torch's CUDA wheel, onnxruntime-gpu with CUDA and cuDNN
#
# Both share one Python (3.11) and one Ray (2.60.0): Ray refuses nodes whose Python minor or Ray version
# differs from the head's, so a cluster may mix cpu and cuda pods only because they come from this one
# base. The CUDA libraries come as NVIDIA's pip wheels (pulled by torch and by onnxruntime-gpu's `cuda`
# and `cudnn` extras), which s2s/engine.py loads with onnxruntime.preload_dlls(); the driver (libcuda)
# is the node's, mounted by the NVIDIA container toolkit when a pod asks for nvidia.com/gpu.
#
# The base is pinned by tag. A digest pin is stricter (the tag can be re-pushed with OS fixes): get it
# with `docker buildx imagetools inspect python:3.11.14-slim-bookworm` (the "Digest:" line) and write
# `FROM python:3.11.14-slim-bookworm@sha256:<digest>`; keep the tag beside it for readers.
# tests/test_deploy_schemas.py lints this file with hadolint and checks the targets.

FROM python:3.11.14-slim-bookworm AS base

# Packages go into the image's own Python (/usr/local), so that `s2s-job` and `ray` are on every PATH,
# a login shell's included (KubeRay can start Ray with `bash -l`, and Debian's /etc/profile resets PATH).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it; its HOME, from /etc/passwd, is
# /home/s2s, where the model cache goes (~/.cache/s2s-job); Ray writes /tmp/ray.
RUN groupadd --gid 1000 s2s \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/s2s --shell /bin/bash s2s

WORKDIR /opt/s2s-job
COPY pyproject.toml README.md ./
COPY s2s ./s2s


# CUDA: torch's wheel built for the same CUDA major as onnxruntime-gpu (13 for onnxruntime-gpu 1.31;
# `python -c "import onnxruntime.capi.build_and_package_info as i; print(i.cuda_version)"` prints it).
FROM base AS cuda
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cu130 torch==2.13.0 \
    && pip install --no-cache-dir . "ray[default,data,train]==2.60.0" "onnxruntime-gpu[cuda,cudnn]==1.31.1"
USER 1000:1000
WORKDIR /home/s2s
ENTRYPOINT ["s2s-job"]
CMD ["--help"]


# CPU (the default target, last): torch's CPU wheel first, so that `pip install .` finds torch satisfied
# and does not pull the CUDA build and its libraries. onnxruntime-gpu, the project's dependency, runs on
# its CPU provider where no GPU is.
FROM base AS cpu
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir . "ray[default,data,train]==2.60.0" "onnxruntime-gpu==1.31.1"
USER 1000:1000
WORKDIR /home/s2s
ENTRYPOINT ["s2s-job"]
CMD ["--help"]
