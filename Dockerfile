# flare-seg FLARE21 submission image.
#   docker build -t flareseg:latest .
#   docker container run --gpus="device=0" --rm -v $PWD/inputs/:/workspace/inputs/ \
#       -v $PWD/outputs/:/workspace/outputs/ flareseg:latest /bin/bash -c "sh predict.sh"
#
# Base: python:3.11-slim plus `tensorflow[and-cuda]`, whose pip wheels carry CUDA and cuDNN (the host
# driver comes from the NVIDIA container toolkit), so no CUDA base image (~3 GB more) is needed.
# Expected size: about 6 GB (TensorFlow ~0.6 GB, NVIDIA CUDA/cuDNN wheels ~4.5 GB, the rest <0.5 GB);
# an estimate from the wheel sizes: no Docker engine was available to build it here.
# No build tools, no test data; the bundled weights are installed with the package.

FROM python:3.11-slim AS build
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY flare_seg/ flare_seg/
COPY weights/ weights/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2
COPY --from=build /wheels /wheels
# [hospital] (DICOM-SEG, statistics) and [cluster] (Dask: the image is also a worker image)
RUN for wheel in /wheels/flare_seg-*.whl; do \
        pip install --no-cache-dir "tensorflow[and-cuda]>=2.16,<3" "${wheel}[hospital,cluster]"; \
    done \
    && rm -rf /wheels
WORKDIR /workspace
COPY inference/predict.sh inference/predict.py ./
RUN mkdir -p /workspace/inputs /workspace/outputs
CMD ["sh", "predict.sh"]
