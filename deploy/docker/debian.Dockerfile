# syntax=docker/dockerfile:1
# Longread on Debian bookworm (slim), the same distribution and packages as scripts/setup.sh.
# Two images from one build (the context is the repository root):
#   docker build -f deploy/docker/debian.Dockerfile --target coordinator -t longread-coordinator .
#   docker build -f deploy/docker/debian.Dockerfile --target worker-cpu -t longread-worker .
# The worker built here has no CUDA backend: run it with --device cpu (deploy/k8s passes it);
# deploy/docker/cuda.Dockerfile builds the GPU worker.
#
# The base is pinned by digest (the multi-arch index of the tag). Refresh it deliberately with
#   docker buildx imagetools inspect debian:bookworm-slim   (the "Digest:" line)
# and replace the digest in every FROM below; deploy/README.md, Images.
# The digests below are those the tags pointed to when this file was written (as seen in
# public build logs); no container engine runs where it was written, so verify before the first
# build.
#
# No Docker HEALTHCHECK: Kubernetes ignores it and probes the gRPC health port itself
# (deploy/k8s), and a health probe binary would be one more thing in the image to patch.
# checkov:skip=CKV_DOCKER_2: Kubernetes probes the gRPC health port; it ignores HEALTHCHECK.

# --- build: the binaries, and the exact runtime packages they need ---------------------------
FROM debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818 AS build
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
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_BUILD_TESTS=OFF \
 && ninja -C /build longread-coordinator longread-worker longread \
 && mkdir -p /out/bin \
 && cp /build/services/coordinator/longread-coordinator /build/services/worker/longread-worker \
      /build/services/cli/longread /out/bin/ \
 && deploy/docker/runtime_packages.sh /out/bin/* > /out/runtime-packages.txt

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

# --- runtime: shared libraries, the model, a non-root user ------------------------------------
FROM debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818 AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
 && xargs -a /tmp/runtime-packages.txt \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
 && groupadd --system --gid 10001 longread \
 && useradd --system --uid 10001 --gid longread --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin longread
COPY --from=model --chown=root:root /out/models/ /opt/longread/models/
WORKDIR /var/lib/longread
LABEL org.opencontainers.image.title="longread" \
      org.opencontainers.image.description="Reads documents far longer than a model's context"

FROM runtime AS coordinator
COPY --from=build /out/bin/longread-coordinator /out/bin/longread /usr/local/bin/
USER 10001:10001
EXPOSE 50051 50052 9464
ENTRYPOINT ["/usr/local/bin/longread-coordinator"]

FROM runtime AS worker-cpu
COPY --from=build /out/bin/longread-worker /usr/local/bin/
USER 10001:10001
EXPOSE 50061 50062 9465
ENTRYPOINT ["/usr/local/bin/longread-worker"]
