#!/usr/bin/env bash
# Build the stacembed image with podman where there is no Docker engine and no image registry.
#
#   scripts/build-image.sh            # -> ghcr.io/stacembed/stacembed:<version> (+ localhost/stacembed:latest)
#
# The image is tagged with the name the application package (cwl/) pulls, so `cwltool --podman`
# finds it locally. With a Docker engine and a registry, `docker build -t IMAGE .` is all it takes;
# this script adds what a registry-less machine needs:
#   - podman/buildah/runc/debootstrap from Debian, and /etc/containers/containers.conf with runc and
#     cgroupfs (only when that file does not exist yet; crun and the default ulimits fail here);
#   - a base image made with debootstrap when BASE_IMAGE is the default localhost/debian:bookworm-slim
#     and it does not exist yet (about 2 minutes);
#   - torch from the local wheels in WHEELS (default /opt/wheels, when it exists), e.g. a CPU build;
#   - the host CA bundle as build secret `cacert`, for pip inside the build;
#   - after a successful build, removal of the untagged images that earlier builds of this
#     Dockerfile left (label io.stacembed.build): the image the tags pointed to before and the
#     builder stage's layers a source change replaced, about 2.4 GB per build. Without it, a
#     machine that rebuilds (CI) fills its disk. The builder stage is tagged
#     localhost/stacembed-builder:latest, the next build's cache. KEEP_OLD_BUILDS=1 keeps them.
# Environment: IMAGE, BASE_IMAGE, WHEELS, TORCH_INDEX_URL (default empty: PyPI and WHEELS only),
# TORCH_VERSION / TORCHVISION_VERSION (default: the Dockerfile's), CACERT, PODMAN_BUILD_ARGS,
# KEEP_OLD_BUILDS.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' stacembed/_version.py)
IMAGE=${IMAGE:-ghcr.io/stacembed/stacembed:$VERSION}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian:bookworm-slim}
WHEELS=${WHEELS:-/opt/wheels}
TORCH_INDEX_URL=${TORCH_INDEX_URL-}
CACERT=${CACERT:-/etc/ssl/certs/ca-certificates.crt}

log() { echo "build-image: $*" >&2; }

if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing podman, buildah, runc and debootstrap"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc debootstrap >/dev/null
    else
        log "podman, runc and debootstrap are needed (apt-get install podman buildah runc debootstrap)"
        exit 1
    fi
fi
if [ ! -e /etc/containers/containers.conf ] && [ "$(id -u)" = 0 ]; then
    log "writing /etc/containers/containers.conf (runc, cgroupfs, no default ulimits)"
    mkdir -p /etc/containers
    cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
CONF
fi

if ! podman image exists "$BASE_IMAGE"; then
    if [ "$BASE_IMAGE" != localhost/debian:bookworm-slim ]; then
        log "base image $BASE_IMAGE not found (podman pull it, or unset BASE_IMAGE to build one)"
        exit 1
    fi
    log "building $BASE_IMAGE with debootstrap"
    start=$SECONDS
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    # Like Debian's -slim images: no documentation, manual pages or translations, now or later.
    mkdir -p "$rootfs/etc/dpkg/dpkg.cfg.d"
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CONF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CONF
    find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "base image built in $((SECONDS - start)) s"
fi

args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL"
      --build-arg "VERSION=$VERSION"
      --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
      --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)")
[ -n "${TORCH_VERSION:-}" ] && args+=(--build-arg "TORCH_VERSION=$TORCH_VERSION")
[ -n "${TORCHVISION_VERSION:-}" ] && args+=(--build-arg "TORCHVISION_VERSION=$TORCHVISION_VERSION")
[ -d "$WHEELS" ] && args+=(--build-context "wheels=$WHEELS")
[ -f "$CACERT" ] && args+=(--secret "id=cacert,src=$CACERT")

log "building $IMAGE from $BASE_IMAGE"
start=$SECONDS
started_at=$(date +%s)
# The builder stage first, tagged, so that its layers (torch's above all) stay as the cache of the
# next build when earlier builds' images are removed below; the image then reuses them.
# shellcheck disable=SC2086
podman build "${args[@]}" ${PODMAN_BUILD_ARGS:-} --target builder -t localhost/stacembed-builder:latest .
# shellcheck disable=SC2086
podman build "${args[@]}" ${PODMAN_BUILD_ARGS:-} -t "$IMAGE" -t localhost/stacembed:latest .
log "built $IMAGE in $((SECONDS - start)) s; size $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')"

if [ "${KEEP_OLD_BUILDS:-0}" != 1 ]; then
    # Untagged (dangling) images of earlier builds only: this build's are tagged, parents of a
    # tagged one (the cached layers), or newer than started_at.
    removed=$(podman image prune --force --filter label=io.stacembed.build --filter "until=$started_at" | grep -c . || true)
    log "removed $removed untagged image(s) of earlier builds; disk: $(df -h --output=avail "$(podman info --format '{{.Store.GraphRoot}}')" | tail -1 | tr -d ' ') free"
fi
