# syntax=docker/dockerfile:1
#
# The controller image: `reconciler run` (SPEC §5) as a non-root user, with its state on
# the volume /var/lib/reconciler. Build from the repository root:
#
#   docker build -t reconciler .
#   docker run -v reconciler-state:/var/lib/reconciler -p 8430:8430 reconciler \
#       --repo https://example.org/models.git --state /var/lib/reconciler/state.db \
#       run --listen 0.0.0.0:8430
#
# The Helm chart in helm/reconciler runs this image as a single-replica StatefulSet.

# --- build: the package and its dependencies into a virtual environment -------------
FROM python:3.11.14-slim-trixie AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/reconciler
COPY pyproject.toml README.md ./
COPY reconciler ./reconciler
RUN /opt/reconciler/bin/pip install --no-cache-dir .

# --- runtime -------------------------------------------------------------------------
FROM python:3.11.14-slim-trixie

LABEL org.opencontainers.image.title="reconciler" \
      org.opencontainers.image.description="A GitOps reconciler for machines and services: the controller (reconciler run)" \
      org.opencontainers.image.licenses="MIT"

# git: the models repository; openssh-client: git over SSH and ssh-keygen for SSH commit
# signatures; gpg: GPG commit signatures (--gpg-keyring); tar and zstd: store transfers.
# Debian package versions are left to the pinned base image's release: pinning them here
# would break the build at every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      git \
      gpg \
      openssh-client \
      tar \
      zstd \
 && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid (10001), so that Kubernetes' runAsUser/fsGroup can name it.
RUN groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/reconciler --create-home \
      --shell /bin/bash reconciler \
 && install -d -o reconciler -g reconciler -m 0700 /var/lib/reconciler /home/reconciler/.ssh

COPY --from=build /opt/reconciler /opt/reconciler

ENV PATH=/opt/reconciler/bin:$PATH \
    HOME=/home/reconciler \
    RECONCILER_STATE=/var/lib/reconciler/state.db \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /var/lib/reconciler
VOLUME ["/var/lib/reconciler"]
EXPOSE 8430

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8430/healthz', timeout=4)"]

ENTRYPOINT ["reconciler"]
CMD ["--state", "/var/lib/reconciler/state.db", "run", "--listen", "0.0.0.0:8430"]
