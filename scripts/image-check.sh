#!/usr/bin/env bash
# `make image-check`: build both images with buildah (chroot isolation, no daemon), on a Debian
# base made here with debootstrap, then run the server from the built image and ask it for one
# completion with the tiny model. Needs root (or buildah set up for the user) and network access
# to Debian's mirror and PyPI; no container registry.
#
# Settings (environment or `make image-check VAR=...`):
#   BASE_IMAGE     base of both images (default: localhost/tokenscale-debian-base:bookworm, made
#                  by debootstrap the first time and kept in buildah's storage)
#   DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   TORCH_WHEELS   a directory holding torch-$TORCH_VERSION+cpu for the base's Python (default:
#                  fetched with this machine's pip, from its configured indexes or else the
#                  PyTorch CPU index); mounted into the build, so the image installs the CPU wheel
#                  instead of a multi-GB CUDA one
#   KEEP=1         keep the built images and the work directory
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}  # Python 3.11, the version the CPU wheel is fetched for
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/tokenscale-debian-base:$DEBIAN_SUITE
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
SERVER_IMAGE=localhost/tokenscale-server:image-check
OPERATOR_IMAGE=localhost/tokenscale-operator:image-check
PORT=${PORT:-18765}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokenscale-image-check.XXXXXX")
CONTAINER=""
SERVER_PID=""
STARTED=$(date +%s)

step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - STARTED ))"; }
fail() { echo "image-check FAILED: $*" >&2; exit 1; }

cleanup() {
    local status=$?
    set +e
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; fi
    if [ -n "$CONTAINER" ]; then buildah rm "$CONTAINER" >/dev/null 2>&1; fi
    if [ "${KEEP:-0}" != 1 ]; then
        buildah rmi "$SERVER_IMAGE" "$OPERATOR_IMAGE" >/dev/null 2>&1 || true
        rm -rf "$WORK"
    else
        echo "kept: $SERVER_IMAGE $OPERATOR_IMAGE $WORK"
    fi
    exit "$status"
}
trap cleanup EXIT

install_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    if [ "$BASE_IMAGE" = "$LOCAL_BASE" ] && ! command -v debootstrap >/dev/null; then missing+=(debootstrap); fi
    [ ${#missing[@]} = 0 ] && return
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing Debian's ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        fail "${missing[*]} not found (Debian/Ubuntu: sudo apt-get install ${missing[*]})"
    fi
}

make_base() {
    [ "$BASE_IMAGE" = "$LOCAL_BASE" ] || return 0
    if buildah inspect --type image "$LOCAL_BASE" >/dev/null 2>&1; then
        step "base image $LOCAL_BASE already made"
        return
    fi
    step "debootstrap $DEBIAN_SUITE (python3, venv) -> $LOCAL_BASE"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$DEBIAN_SUITE" "$WORK/rootfs" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
    # Trust what this machine trusts (a TLS-inspecting proxy's CA, say), so pip in the build
    # reaches PyPI wherever this machine's pip does. pip brings its own CA list unless told.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$WORK/rootfs/usr/local/share/ca-certificates/"
        chroot "$WORK/rootfs" update-ca-certificates >/dev/null 2>&1
    fi
    local base mnt
    base=$(buildah from scratch)
    mnt=$(buildah mount "$base")
    tar -C "$WORK/rootfs" -c . | tar -C "$mnt" -x
    buildah umount "$base" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$base"
    buildah commit -q "$base" "$LOCAL_BASE" >/dev/null
    buildah rm "$base" >/dev/null
    rm -rf "$WORK/rootfs"
}

fetch_torch() {
    if [ -n "${TORCH_WHEELS:-}" ]; then return; fi
    TORCH_WHEELS="$WORK/wheels"
    step "fetching torch==$TORCH_VERSION+cpu (cp311) with this machine's pip"
    local args=(download --no-deps --only-binary=:all: --python-version 3.11
                --platform manylinux_2_28_x86_64 -d "$TORCH_WHEELS" "torch==$TORCH_VERSION+cpu")
    "$PYTHON" -m pip "${args[@]}" -q 2>/dev/null \
        || "$PYTHON" -m pip "${args[@]}" -q --index-url https://download.pytorch.org/whl/cpu \
        || fail "no torch $TORCH_VERSION+cpu wheel; set TORCH_WHEELS to a directory holding one"
}

build() {  # build IMAGE DOCKERFILE [buildah args...]
    local image=$1 dockerfile=$2
    shift 2
    step "buildah build -f $dockerfile -> $image"
    buildah build --isolation chroot --layers --force-rm -f "$ROOT/$dockerfile" -t "$image" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" "$@" "$ROOT" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log"; fail "building $dockerfile"; }
}

check_operator() {
    step "operator image: tokenscale runs, torch is absent"
    CONTAINER=$(buildah from "$OPERATOR_IMAGE")
    buildah run --isolation chroot "$CONTAINER" -- tokenscale crd >"$WORK/crd.yaml" \
        || fail "tokenscale crd in the operator image"
    grep -q "kind: CustomResourceDefinition" "$WORK/crd.yaml" || fail "tokenscale crd printed no CRD"
    if buildah run --isolation chroot "$CONTAINER" -- python3 -c "import torch" 2>/dev/null; then
        fail "the operator image holds torch"
    fi
    buildah rm "$CONTAINER" >/dev/null
    CONTAINER=""
}

check_server() {
    local c=$1 out
    step "server image: --device cuda without CUDA exits with the reason"
    buildah run --isolation chroot "$c" -- tokenscale-server tiny-model /tmp/tiny >/dev/null
    buildah run --isolation chroot "$c" -- sh -c ': > /tmp/termination-log'  # as the kubelet does
    set +e
    out=$(buildah run --isolation chroot "$c" -- tokenscale-server serve --model /tmp/tiny \
        --device cuda --termination-log /tmp/termination-log 2>&1)
    local rc=$?
    set -e
    [ "$rc" = 3 ] || { echo "$out" | tail -5; fail "serve --device cuda exited $rc, not 3"; }
    local message
    message=$(buildah run --isolation chroot "$c" -- cat /tmp/termination-log)
    echo "termination message: $message"
    case "$message" in
        *"CUDA is not usable"*"was built for CUDA None (a CPU build of torch)"*) ;;
        *) echo "$out" | tail -5; fail "the termination message does not give the reason" ;;
    esac

    step "server image: serve the tiny model as uid 65532 and ask for one completion"
    buildah run --isolation chroot "$c" -- tokenscale-server serve --model /tmp/tiny --served-model-name tiny \
        --host 127.0.0.1 --port "$PORT" --threads 1 >"$WORK/serve.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 120); do
        curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
        kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/serve.log"; fail "the server exited"; }
        sleep 1
    done
    out=$(curl -fsS "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' \
        -d '{"model": "tiny", "prompt": "Hello", "max_tokens": 8, "temperature": 0}') \
        || { tail -20 "$WORK/serve.log"; fail "no completion"; }
    echo "$out"
    "$PYTHON" -c 'import json, sys; body = json.loads(sys.argv[1]); assert body["usage"]["completion_tokens"] >= 1, body; assert body["choices"][0]["text"], body' "$out" \
        || fail "the completion is not OpenAI-shaped"
    curl -fsS "http://127.0.0.1:$PORT/metrics" | grep -q '^vllm:generation_tokens_total' || fail "no metrics"
    ps -eo uid=,args= | awk -v port="$PORT" '/tokenscale-server serve/ && $0 ~ "--port " port && !/buildah/ {print "server uid:", $1}'
}

install_tools
make_base
fetch_torch
build "$SERVER_IMAGE" server/Dockerfile --build-arg TORCH_FLAVOUR=cpu --build-arg TORCH_WHEELS=/wheels \
    --build-arg TORCH_VERSION="$TORCH_VERSION" -v "$TORCH_WHEELS:/wheels:ro"
build "$OPERATOR_IMAGE" operator/Dockerfile
check_operator
CONTAINER=$(buildah from "$SERVER_IMAGE")
check_server "$CONTAINER"
step "image-check passed"
