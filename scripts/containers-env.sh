# Sourced by the image scripts: podman and buildah settings that work on a machine like this one
# (a container or VM without cgroup v2 delegation, CAP_SYS_RESOURCE or an image registry).
#
# - runc and cgroupfs: crun fails with "cgroups in hybrid mode not supported".
# - ulimits within the hard limits: podman's default nofile raises them, which fails with
#   "setrlimit RLIMIT_NOFILE: Operation not permitted".
# - vfs storage (no overlay mounts needed) in a folder of our own, with TMPDIR beside it: vfs copies
#   every layer, a few GB in all.
containers=${EDGEFILTER_CONTAINERS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefilter/containers}
mkdir -p "$containers/tmp" "$containers/storage" "$containers/run"
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
[ "$nproc" = unlimited ] && nproc=1048576
[ "$nproc" -gt 4096 ] && nproc=4096
[ "$nofile" -gt 20000 ] && nofile=20000
cat > "$containers/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$containers/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$containers/storage"
runroot = "$containers/run"
EOF
export CONTAINERS_CONF=$containers/containers.conf
export CONTAINERS_STORAGE_CONF=$containers/storage.conf
export TMPDIR=$containers/tmp
