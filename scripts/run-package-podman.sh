#!/usr/bin/env bash
# Run the stacembed image and its application package with podman, as a user and a platform would.
#
#   scripts/run-package-podman.sh                           # both checks below on the sample catalog
#   scripts/run-package-podman.sh ENTRY [JOB | --input value ...]   # only the package, e.g.
#   scripts/run-package-podman.sh stacembed-scatter job.yml
#
# 1. `podman run --rm -v DIR:/data IMAGE run --out /data/out`: the image's default job (the README's
#    `docker run` line), as the image's own non-root user.
# 2. `cwltool --podman cwl/stacembed.cwl#ENTRY ...`: the OGC application package in the image, with
#    cwltool's container isolation (read-only root, its own user, HOME = the output directory).
# The image is built first (scripts/build-image.sh) when it is missing. Results go to OUTDIR
# (default: a new directory under /tmp); cwltool comes from the active Python environment.
# Environment: IMAGE (default: the dockerPull of cwl/stacembed.cwl), OUTDIR, CWLTOOL_ARGS.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-$(sed -n 's/^ *dockerPull: *//p' "$repo/cwl/stacembed.cwl" | head -1)}
OUTDIR=${OUTDIR:-$(mktemp -d /tmp/stacembed-podman.XXXXXX)}
log() { echo "run-package-podman: $*" >&2; }

command -v cwltool >/dev/null || { log "cwltool not found (pip install -e '.[test]')"; exit 1; }
if ! podman image exists "$IMAGE"; then
    log "image $IMAGE not found; building it"
    IMAGE=$IMAGE bash "$repo/scripts/build-image.sh"
fi
# As root, cwltool's --userns=keep-id must go (see scripts/cwltool-podman/podman): put that wrapper
# first on PATH (a copy, executable whatever the checkout's file modes).
wrappers=$(mktemp -d)
trap 'rm -rf "$wrappers"' EXIT
install -m 0755 "$repo/scripts/cwltool-podman/podman" "$wrappers/podman"
export PATH="$wrappers:$PATH"

check_catalog() {  # DIR: a catalog.json and at least one item with its assets next to it
    local dir=$1
    [ -f "$dir/catalog.json" ] || { log "no catalog.json in $dir"; exit 1; }
    local items
    items=$(find "$dir" -mindepth 3 -maxdepth 3 -name '*.json' ! -path '*/model/*' | wc -l)
    [ "$items" -gt 0 ] || { log "no items in $dir"; exit 1; }
    log "$dir: catalog.json and $items item(s)"
}

if [ $# -eq 0 ]; then
    log "1/2 podman run $IMAGE run --out /data/out"
    mkdir -p "$OUTDIR/docker-run"
    chown 1000:1000 "$OUTDIR/docker-run" 2>/dev/null || chmod 777 "$OUTDIR/docker-run"
    start=$SECONDS
    podman run --rm -v "$OUTDIR/docker-run:/data" "$IMAGE" run --out /data/out
    log "default job in $((SECONDS - start)) s"
    check_catalog "$OUTDIR/docker-run/out"
    set -- stacembed --stac_catalog "$repo/catalogs/sample"
    log "2/2 cwltool --podman cwl/stacembed.cwl#stacembed on catalogs/sample"
fi

entry=$1
shift
start=$SECONDS
# shellcheck disable=SC2086
cwltool --podman ${CWLTOOL_ARGS:-} --outdir "$OUTDIR/package" "$repo/cwl/stacembed.cwl#$entry" "$@" \
    > "$OUTDIR/package.json"
log "package $entry in $((SECONDS - start)) s"
results=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"]["path"])' "$OUTDIR/package.json")
check_catalog "$results"
echo "$results"
