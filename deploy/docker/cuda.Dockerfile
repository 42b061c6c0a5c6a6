# syntax=docker/dockerfile:1
# The GPU worker: built on NVIDIA's CUDA devel image, run on its CUDA runtime image (Ubuntu 24.04,
# whose gRPC 1.51 / protobuf 3.21 match Debian bookworm's). The context is the repository root:
#   docker build -f deploy/docker/cuda.Dockerfile -t longread-worker-cuda .
# Kernels are compiled for sm_90 (H100/H200: CMAKE_CUDA_ARCHITECTURES in CMakeLists.txt).
#
# Bases are pinned by digest (the multi-arch index of each tag). Refresh them deliberately with
#   docker buildx imagetools inspect nvidia/cuda:13.0.0-runtime-ubuntu24.04   (the "Digest:" line)
# and the same for -devel- and debian:bookworm-slim, then replace the digests in the FROM lines
# below; deploy/README.md, Images.
# The digests below are those the tags pointed to when this file was written (as seen in
# public build logs); no container engine runs where it was written, so verify before the first
# build.
#
# checkov:skip=CKV_DOCKER_2: Kubernetes probes the gRPC health port; it ignores HEALTHCHECK.

# --- build: the worker with its CUDA backend ---------------------------------------------------
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04@sha256:1e8ac7a54c184a1af8ef2167f28fa98281892a835c981ebcddb1fad04bdd452d AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Build tools are not version-pinned: they never reach an image. The runtime stage installs the
# exact versions this stage linked against (runtime_packages.sh).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build libabsl-dev librocksdb-dev libgrpc++-dev \
      libprotobuf-dev protobuf-compiler protobuf-compiler-grpc prometheus-cpp-dev \
      nlohmann-json3-dev libxxhash-dev liblz4-dev libzstd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The grep fails the build if CMake did not find nvcc (a worker without its CUDA backend).
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_BUILD_TESTS=OFF \
 && grep -q '^CMAKE_CUDA_COMPILER:FILEPATH=/' /build/CMakeCache.txt \
 && ninja -C /build longread-worker \
 && mkdir -p /out/bin \
 && cp /build/services/worker/longread-worker /out/bin/ \
 && deploy/docker/runtime_packages.sh /out/bin/longread-worker > /out/runtime-packages.txt

# --- model: the default model, checked by SHA-256 ---------------------------------------------
FROM debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818 AS model
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY deploy/docker/fetch_model.sh deploy/docker/
COPY engine/scorer/weights/ engine/scorer/weights/
RUN deploy/docker/fetch_model.sh /src /out/models

# --- runtime -----------------------------------------------------------------------------------
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04@sha256:95318efecfd68ab3d109da5277863257b06137c84f34a87f38de970d5cd035d3 AS worker-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# The CUDA libraries the build linked are already in this image (same CUDA release): install
# only what is missing.
RUN apt-get update \
 && (grep -v -x -F -f <(dpkg-query -W -f='${binary:Package}=${Version}\n') \
       /tmp/runtime-packages.txt || true) > /tmp/missing.txt \
 && xargs -r -a /tmp/missing.txt \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt /tmp/missing.txt \
 && groupadd --system --gid 10001 longread \
 && useradd --system --uid 10001 --gid longread --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin longread
COPY --from=model --chown=root:root /out/models/ /opt/longread/models/
COPY --from=build /out/bin/longread-worker /usr/local/bin/
WORKDIR /var/lib/longread
LABEL org.opencontainers.image.title="longread-worker-cuda" \
      org.opencontainers.image.description="Longread worker with the CUDA backend"
USER 10001:10001
EXPOSE 50061 50062 9465
ENTRYPOINT ["/usr/local/bin/longread-worker"]
