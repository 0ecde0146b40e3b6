# flare-seg FLARE21 submission image.
#   docker build -t flareseg:latest .
#   docker container run --gpus="device=0" --rm -v $PWD/inputs/:/workspace/inputs/ \
#       -v $PWD/outputs/:/workspace/outputs/ flareseg:latest /bin/bash -c "sh predict.sh"
# Offline (no registry, no index): scripts/build_container.sh --gpu builds it from a Debian
# bookworm base made with debootstrap and the wheels downloaded on the host into wheelhouse/gpu/.
#
# Base: python:3.11-slim (a build argument: --build-arg BASE_IMAGE=...; any base with python3.11 and
# its venv module) plus `tensorflow[and-cuda]`, whose pip wheels carry CUDA and cuDNN (the host
# driver comes from the NVIDIA container toolkit), so no CUDA base image (~3 GB more) is needed.
# Everything is installed into /opt/venv (Debian's own python3 refuses system-wide pip installs,
# PEP 668), which alone is copied into the runtime stage: no wheels, no build tools, no test data;
# the bundled weights are installed with the package. Size and timings: README, "FLARE container".

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# pip reads these: the wheels in wheelhouse/gpu/ (empty in a fresh clone) are preferred; the offline
# build passes --build-arg PIP_NO_INDEX=1 so that nothing else is asked for.
ARG PIP_NO_INDEX=0
ENV PIP_FIND_LINKS=/wheelhouse \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY wheelhouse/gpu/ /wheelhouse/
WORKDIR /src
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY flare_seg/ flare_seg/
COPY weights/ weights/
# [hospital] (DICOM-SEG, statistics) and [cluster] (Dask: the image is also a worker image)
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && for wheel in /wheels/flare_seg-*.whl; do \
        /opt/venv/bin/pip install "tensorflow[and-cuda]>=2.16,<3" "${wheel}[hospital,cluster]"; \
    done

FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
COPY --from=build /opt/venv /opt/venv
WORKDIR /workspace
COPY inference/predict.sh inference/predict.py ./
RUN mkdir -p /workspace/inputs /workspace/outputs
CMD ["sh", "predict.sh"]
