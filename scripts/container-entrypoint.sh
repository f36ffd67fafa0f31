#!/bin/sh
# The image's ENTRYPOINT, installed as /usr/local/bin/stacembed (first on the image's PATH).
#   docker run IMAGE run --out /data/out       -> stacembed run --out /data/out
#   docker run IMAGE stacembed run ...         -> stacembed run ...
#   docker run IMAGE python3 script.py ...     -> python3 script.py ...
# Workflow engines differ: Kubernetes-based ones (Calrissian) replace the entrypoint with the CWL
# command line, while cwltool keeps it and passes the whole command line (baseCommand included) as
# arguments. Both run the same thing with this shim.
if [ "${1:-}" = stacembed ]; then
    shift
elif [ -n "${1:-}" ]; then
    case "$(command -v -- "$1" 2>/dev/null)" in
        /*) exec "$@" ;;  # an executable, not a stacembed subcommand or option
    esac
fi
exec /opt/stacembed/bin/stacembed "$@"
