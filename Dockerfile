# bids_synth: GPU image (CUDA runtime base, CUDA build of torch).
#
#   docker build -t bids_synth:0.1.0 .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /path/to/bids:/data:ro -v /path/to/out:/out bids_synth:0.1.0 /data /out participant
#
# Two stages: `builder` has the compilers and pip and makes /opt/bids_synth (a venv, installed by
# tools/install.sh --cuda, the same script as CI and `make`) and /opt/templateflow
# (tools/container_setup.sh, shared with Singularity.def); the final stage copies just those two
# folders onto the same CUDA runtime base, with Python but no build tools, caches or sources.
# Network is needed at build time only (PyPI; TemplateFlow for MNI152NLin2009cAsym).

ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Package versions are not pinned: the base image tag pins the Ubuntu release, and the archive
# drops superseded versions (security updates), so exact pins would break rebuilds; nothing of
# this stage reaches the final image except the venv built with this Python.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.12 python3.12-venv python3.12-dev build-essential ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/bids_synth
WORKDIR /src
COPY pyproject.toml README.md ./
COPY tools/install.sh tools/container_setup.sh tools/
COPY bids_synth bids_synth
# the one install path (as CI and the README): torch's CUDA build, then the package (pip
# byte-compiles it: the read-only image starts faster with the .pyc files in place)
RUN tools/install.sh --cuda /opt/bids_synth/bin/python
ENV TEMPLATEFLOW_HOME=/opt/templateflow
RUN tools/container_setup.sh /opt/bids_synth/bin/python

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}
ARG BIDS_SYNTH_VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="bids_synth" \
      org.opencontainers.image.description="BIDS App: imputes missing brain-imaging modalities with diffusion models" \
      org.opencontainers.image.version="${BIDS_SYNTH_VERSION}" \
      org.opencontainers.image.source="https://github.com/bids-synth/bids_synth" \
      org.opencontainers.image.url="https://github.com/bids-synth/bids_synth" \
      org.opencontainers.image.documentation="https://github.com/bids-synth/bids_synth/blob/main/docs/usage.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"
# Only the interpreter the venv was built with (same base, same path). Unpinned for the reason
# given in the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/* /var/log/apt /var/log/dpkg.log \
 && (userdel --remove ubuntu 2>/dev/null || true) \
 && groupadd --gid 1000 bidssynth \
 && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/bidssynth --shell /bin/bash bidssynth \
 && chmod 1777 /home/bidssynth
COPY --from=builder /opt/bids_synth /opt/bids_synth
COPY --from=builder /opt/templateflow /opt/templateflow
# HOME is world-writable (sticky) so that `docker run -u UID:GID` with any ids works; caches go
# to /tmp; no network at run time: TemplateFlow does not update, Nipype does not phone home,
# Hugging Face libraries stay offline (the sentence encoder's weights ship as a package).
ENV PATH=/opt/bids_synth/bin:${PATH} \
    VIRTUAL_ENV=/opt/bids_synth \
    HOME=/home/bidssynth \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    NIPYPE_NO_ET=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BIDS_SYNTH_CONTAINER_TYPE=docker \
    BIDS_SYNTH_CONTAINER_TAG=${BIDS_SYNTH_VERSION}
USER 1000:1000
WORKDIR /tmp
# fails the build when the installed CLI does not start
RUN bids_synth --version
ENTRYPOINT ["bids_synth"]
CMD ["--help"]
