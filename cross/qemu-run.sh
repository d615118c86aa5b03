#!/usr/bin/env bash
# Cargo runner for the ARM targets (.cargo/config.toml): runs a foreign binary under
# qemu-user with Debian's cross sysroot as the ELF interpreter prefix.
#
#   cross/qemu-run.sh aarch64|arm BINARY [ARGS...]
#
# Equivalent to `qemu-aarch64 -L /usr/aarch64-linux-gnu BINARY ARGS` (or qemu-arm with
# /usr/arm-linux-gnueabihf), except that:
#   * on a native host of the same architecture the binary is executed directly;
#   * QEMU_LD_PREFIX is exported (unless already set), so processes the binary starts
#     (integration tests run `beltbox`) find the sysroot when the kernel hands them to
#     qemu through binfmt_misc (cross/test.sh registers it);
#   * the CPU model comes from QEMU_CPU, which qemu-user honours natively
#     (e.g. QEMU_CPU=cortex-a72: no dot-product; QEMU_CPU=cortex-a76: SDOT/UDOT).
set -euo pipefail

die() {
    echo "qemu-run: error: $*" >&2
    exit 127
}

[ "$#" -ge 2 ] || die "usage: cross/qemu-run.sh aarch64|arm BINARY [ARGS...]"
arch="$1"
shift

case "$arch" in
aarch64)
    sysroot=/usr/aarch64-linux-gnu
    native='^aarch64$'
    ;;
arm)
    sysroot=/usr/arm-linux-gnueabihf
    native='^armv[78]l$'
    ;;
*) die "unknown architecture '$arch' (expected aarch64 or arm)" ;;
esac

if [[ "$(uname -m)" =~ $native ]]; then
    exec "$@"
fi

command -v "qemu-$arch" >/dev/null 2>&1 ||
    die "qemu-$arch not found: run cross/test.sh once, or apt-get install qemu-user"
[ -d "$sysroot" ] ||
    die "$sysroot missing: run cross/build.sh once, or install the Debian cross libc"

export QEMU_LD_PREFIX="${QEMU_LD_PREFIX:-$sysroot}"
exec "qemu-$arch" -L "$QEMU_LD_PREFIX" "$@"
