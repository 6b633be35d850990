#!/usr/bin/env bash
# Makes the Dockerfiles' build-stage base, docker.io/library/rust:1.95-bookworm, on a machine with
# no image registry (run by scripts/images.sh). Nothing to do when podman already has it, pulled
# or made.
#
# The stand-in is what the official image is, made from Debian's packages: bookworm's minbase
# (debootstrap) with gcc, libc6-dev, make, git and ca-certificates, and a Rust toolchain in
# /usr/local/rustup and /usr/local/cargo with the official image's RUSTUP_HOME, CARGO_HOME and
# PATH. The toolchain is this machine's (the only one it can have), with its armv7 standard library.
# This machine's network re-signs TLS, so the stand-in trusts the host's CA bundle, which the
# runtime stage then copies: images made here are for this machine's tests, not for shipping.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/containers-env.sh
source scripts/containers-env.sh
base=docker.io/library/rust:1.95-bookworm
if podman image exists "$base"; then
  echo "base $base: present"
  exit 0
fi
toolchain=$(rustc --print sysroot)
version=$(rustc --version | cut -d' ' -f2)
case $version in 1.95.*) ;; *) echo "warning: the stand-in for rust:1.95 has rustc $version" >&2 ;; esac
root=$containers/rootfs-rust
rm -rf "$root"
echo "== debootstrap bookworm (minbase) for $base"
debootstrap --variant=minbase --include=gcc,libc6-dev,make,git,ca-certificates,curl \
  bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$containers/debootstrap.log" 2>&1 \
  || { tail -20 "$containers/debootstrap.log"; exit 1; }
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
echo "== the Rust toolchain ($version, from $toolchain)"
name=$version-x86_64-unknown-linux-gnu
mkdir -p "$root/usr/local/rustup/toolchains/$name" "$root/usr/local/cargo/bin"
# Everything but the documentation (share/doc: 0.8 GB).
tar -C "$toolchain" --exclude=./share/doc -c . | tar -C "$root/usr/local/rustup/toolchains/$name" -x
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$name" > "$root/usr/local/rustup/settings.toml"
cp "$(command -v rustup)" "$root/usr/local/cargo/bin/rustup"
for tool in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
  ln -sf rustup "$root/usr/local/cargo/bin/$tool"
done
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner -C "$root" -c . | podman import -q \
  --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
  --change 'ENV CARGO_HOME=/usr/local/cargo' \
  --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$base" >/dev/null
rm -rf "$root"
echo "base $base: made"
