#!/usr/bin/env bash
# Build the flare-seg container images offline: no registry, no package index inside the build.
#
#   scripts/build_container.sh [--cpu|--gpu|--all] [--constraint FILE] [--base NAME]
#
#   --cpu   Dockerfile.cpu -> flareseg:cpu     (OpenVINO, no TensorFlow; the default)
#   --gpu   Dockerfile     -> flareseg:latest  (tensorflow[and-cuda]; about 4 GB of wheels to download)
#   --all   both
#   --constraint FILE  pip constraints for the download, e.g. `pip freeze` of the environment whose
#                      results the image should reproduce
#   --base NAME        the base image (default flare-seg-base:bookworm)
#
# Why offline: on machines where Docker Hub cannot be reached and TLS inside a build fails, the
# public python:3.11-slim base and `pip install` in the Dockerfile cannot work. So:
#   1. the base image is made from Debian's archive: debootstrap (minbase, python3, python3-venv),
#      then `docker import` (skipped when the base image already exists);
#   2. the wheels are downloaded on the host into wheelhouse/cpu or wheelhouse/gpu (skipped when
#      the folder already satisfies the requirements), with the host's pip: CPython 3.11 on x86_64
#      Linux, the same Python as Debian bookworm's;
#   3. `docker build --network none --build-arg PIP_NO_INDEX=1` installs from those wheels alone; the
#      build context is streamed from exactly the files the Dockerfile copies.
# Every step is idempotent: a second run reuses the base image, the wheels and Docker's layer cache.
# Needs: docker (a reachable daemon), debootstrap and root for step 1, python3.11 with pip.
# Environment: PYTHON (the host interpreter for pip download, default python3), TMPDIR.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
base=flare-seg-base:bookworm
constraint=
kinds=

die() { echo "build_container.sh: $*" >&2; exit 1; }
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --cpu) kinds="$kinds cpu" ;;
        --gpu) kinds="$kinds gpu" ;;
        --all) kinds="cpu gpu" ;;
        --constraint) [ "$#" -ge 2 ] || die "--constraint needs a file"; constraint=$(realpath "$2"); shift ;;
        --base) [ "$#" -ge 2 ] || die "--base needs an image name"; base=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
    shift
done
kinds=${kinds:-cpu}
[ -z "$constraint" ] || [ -f "$constraint" ] || die "constraint file not found: $constraint"

check_tools() {
    command -v docker >/dev/null || die "docker not found (Debian: apt-get install docker.io)"
    docker info >/dev/null 2>&1 || die "no Docker daemon reachable (start one, e.g. as root: dockerd --iptables=false --bridge=none &)"
    "$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (set PYTHON=/path/to/python3.11)"
    local host
    host=$("$python" -c 'import platform, sys; print("%d.%d-%s-%s" % (sys.version_info[:2] + (sys.platform, platform.machine())))')
    [ "$host" = "3.11-linux-x86_64" ] || die "the wheels are downloaded for the host's Python, which must be CPython 3.11 on x86_64 Linux like the image's (got $host; set PYTHON=...)"
}

make_base() {
    if docker image inspect "$base" >/dev/null 2>&1; then
        echo "base image $base exists"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap not found (Debian: apt-get install debootstrap)"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to make the base image $base"
    local rootfs
    rootfs=$(mktemp -d "${TMPDIR:-/var/tmp}/flare-seg-rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this very folder
    trap "rm -rf '$rootfs'" EXIT
    echo "debootstrap bookworm into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
        || die "debootstrap failed (log: $rootfs/debootstrap/debootstrap.log)"
    # what an image needs neither at build nor at run time; the copyright files stay
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale
    find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$base"
    rm -rf "$rootfs"
    trap - EXIT
}

check_base_python() {
    local image_python host_python
    image_python=$(docker run --rm --network none "$base" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
        || die "the base image $base has no working python3"
    host_python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$image_python" = "$host_python" ] || die "base image $base has Python $image_python, the wheels are for $host_python"
    docker run --rm --network none "$base" python3 -c 'import venv, ensurepip' \
        || die "the base image $base lacks python3's venv/ensurepip (Debian: python3-venv)"
}

# The requirements of one image, as `pip download` arguments.
requirements() {
    case "$1" in
        cpu) echo "-r inference/requirements-cpu.txt setuptools>=69 wheel" ;;
        gpu) echo "tensorflow[and-cuda]>=2.16,<3 .[hospital,cluster] setuptools>=69 wheel" ;;
    esac
}

download_wheels() {
    local kind=$1 dir="$root/wheelhouse/$1" args=()
    read -r -a args <<< "$(requirements "$kind")"
    [ -z "$constraint" ] || args+=(-c "$constraint")
    mkdir -p "$dir"
    cd "$root"
    # already complete? (resolves against the folder alone, no network)
    if "$python" -m pip download -q --isolated --no-index --find-links "$dir" -d "$dir" "${args[@]}" >/dev/null 2>&1; then
        echo "wheelhouse/$kind is complete"
        return
    fi
    echo "downloading the wheels for the $kind image into wheelhouse/$kind"
    "$python" -m pip download --prefer-binary -d "$dir" "${args[@]}" \
        || die "pip download failed for the $kind image (needs the package index from the host)"
}

build_image() {
    local kind=$1 dockerfile tag
    case "$kind" in
        cpu) dockerfile=Dockerfile.cpu; tag=flareseg:cpu ;;
        gpu) dockerfile=Dockerfile; tag=flareseg:latest ;;
    esac
    echo "building $tag from $dockerfile on $base (no network)"
    cd "$root"
    # the context: exactly what the Dockerfile copies, without bytecode
    tar -c --exclude=__pycache__ --exclude='*.pyc' "$dockerfile" setup.cfg setup.py pyproject.toml README.md \
            flare_seg weights inference "wheelhouse/$kind" \
        | docker build --network none --build-arg BASE_IMAGE="$base" --build-arg PIP_NO_INDEX=1 \
            -f "$dockerfile" -t "$tag" - \
        || die "docker build of $tag failed"
    echo "$tag: $(docker image inspect --format '{{.Size}}' "$tag") bytes"
}

check_tools
make_base
check_base_python
for kind in $kinds; do
    download_wheels "$kind"
    build_image "$kind"
done
