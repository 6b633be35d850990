#!/usr/bin/env bash
# Builds both images from nothing, as a user's tooling would, and runs them (issue 15):
#   scripts/images.sh
#
# 1. Installs podman, buildah and runc from Debian's packages (scripts/setup.sh images).
# 2. Makes the build stage's base, docker.io/library/rust:1.95-bookworm, when no registry is
#    reachable (scripts/images-base.sh): Debian's minbase plus this machine's Rust toolchain.
# 3. Builds Dockerfile.amd64 and Dockerfile.arm32v7 unchanged, with no --platform flag (what
#    iotedgedev and VS Code run): `buildah bud -f Dockerfile.X -t localhost/edgefilter:X .`.
# 4. Runs the amd64 image against a mosquitto on this machine with a connection string
#    (scripts/image-run.sh): it connects, alerts flow, a twin patch applies, it runs as uid 10001,
#    and `podman stop` (SIGTERM) ends it with exit code 0 within a few seconds.
# 5. Checks the arm32v7 image's architecture and its program (an armv7 ELF), and runs that program
#    from the image's own files under qemu-arm through the same checks (no binfmt: no `podman run`).
#
# Ends with one line per image, `image amd64 BYTES` and `image arm32v7 BYTES` (the size podman
# reports: the uncompressed layers), and exits non-zero if any step fails.
#
# Containers' storage and settings live in $EDGEFILTER_CONTAINERS (default
# ~/.cache/edgefilter/containers); a second run reuses the base image made there.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
scripts/setup.sh images

# shellcheck source=scripts/containers-env.sh
source scripts/containers-env.sh
scripts/images-base.sh
podman image prune -f >/dev/null   # the previous run's images, untagged by this one's

for arch in amd64 arm32v7; do
  echo "== building Dockerfile.$arch"
  t0=$SECONDS
  buildah bud --isolation chroot --layers=false -q -f "Dockerfile.$arch" -t "localhost/edgefilter:$arch" . >/dev/null
  echo "built localhost/edgefilter:$arch in $((SECONDS - t0)) s"
done

scripts/image-run.sh amd64
scripts/image-run.sh arm32v7

echo "== done in $((SECONDS - started)) s"
for arch in amd64 arm32v7; do
  echo "image $arch $(podman image inspect --format '{{.Size}}' "localhost/edgefilter:$arch")"
done
