# stacembed container image.
#
#   docker build -t stacembed .
#   docker run --rm -v "$PWD:/data" stacembed run --out /data/out     # the bundled sample job
#
# CPU torch by default. For a CUDA image pick a CUDA base and torch's CUDA wheel index, e.g.
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Where no image registry is reachable, build the base yourself and pass it as BASE_IMAGE, and
# bring torch from local wheels with `--build-context wheels=DIR`: scripts/build-image.sh does both.
# See "Containers and application packages" in README.md.

ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# Local wheels (for example a CPU torch) that pip may use: empty unless the build is given
# `--build-context wheels=DIR`.
FROM scratch AS wheels

FROM ${BASE_IMAGE} AS builder
# Every image a build makes carries io.stacembed.build, so that scripts/build-image.sh can remove
# the untagged ones earlier builds left behind (about 2.4 GB per source change).
LABEL io.stacembed.build=builder
# Where pip finds torch and torchvision builds (the CPU ones by default); empty: PyPI only.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# A matching pair (torchvision pins torch): 0.28 goes with 2.13, 0.29 with 2.14.
ARG TORCH_VERSION=2.13.0
ARG TORCHVISION_VERSION=0.28.0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/stacembed
ENV PATH=/opt/stacembed/bin:$PATH

# torch first, so that installing stacembed keeps it. A build secret `cacert` (a CA bundle) is
# used for pip when given (builds behind a TLS-inspecting proxy).
RUN --mount=type=secret,id=cacert \
    --mount=type=bind,from=wheels,target=/wheels \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    pip install --find-links /wheels ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml README.md /src/
COPY catalogs /src/catalogs
COPY stacembed /src/stacembed
RUN --mount=type=secret,id=cacert \
    set -eu; \
    if [ -s /run/secrets/cacert ]; then export PIP_CERT=/run/secrets/cacert; fi; \
    pip install /src \
 && pip uninstall -y pip

# timm imports torchvision, whose compiled ops only load next to the torch build they were made
# for. PyPI's torchvision is built against PyPI's CUDA torch: next to a CPU torch from local
# wheels its ops do not load and torchvision 0.28 then fails at import (an unguarded
# register_fake of torchvision::nms). stacembed uses no torchvision op, so in that case only,
# make those registrations conditional on the ops being there, as torchvision's others are.
# Then check that the network runs, and drop torch's C++ test programs (130 MB).
RUN set -eu; \
    if ! python3 -c "import torchvision" 2>/dev/null; then \
        meta="$(python3 -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"; \
        sed -i 's/^@torch\.library\.register_fake(/@(torch.library.register_fake if torchvision.extension._has_ops() else (lambda *a, **k: (lambda f: f)))(/' "$meta"; \
        echo "torchvision ops unavailable with this torch: guarded its fake-op registrations"; \
    fi; \
    python3 -c "import torch, torchvision, timm; timm.create_model('test_resnet', in_chans=6, num_classes=0)(torch.zeros(1, 6, 64, 64))"; \
    stacembed --version; \
    stacembed models list; \
    torch="$(python3 -c 'import importlib.util as u; print(u.find_spec("torch").submodule_search_locations[0])')"; \
    rm -rf "$torch/test" "$torch"/bin/test_* "$torch"/bin/*Test "$torch"/bin/protoc*

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="stacembed" \
      org.opencontainers.image.description="STAC items in, embeddings out: a STAC catalog of GeoParquet and COG embeddings" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/stacembed/stacembed" \
      org.opencontainers.image.url="https://github.com/stacembed/stacembed" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.stacembed.build=image
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && (getent passwd 1000 >/dev/null \
     || useradd --uid 1000 --user-group --create-home --home-dir /home/stacembed --shell /usr/sbin/nologin stacembed) \
 && mkdir -p /data && chown 1000:1000 /data
COPY --from=builder /opt/stacembed /opt/stacembed
# `stacembed` on PATH is a shim that also runs whole command lines (IMAGE stacembed run ...,
# IMAGE python3 ...), as cwltool passes them; see the script.
COPY --chmod=0755 scripts/container-entrypoint.sh /usr/local/bin/stacembed
ENV PATH=/usr/local/bin:/opt/stacembed/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# uid 1000: `stacembed`, or the base image's own first user (Ubuntu's `ubuntu`). Numeric, so that
# Kubernetes' runAsNonRoot can check it.
USER 1000:1000
WORKDIR /data
ENTRYPOINT ["stacembed"]
CMD ["--help"]
