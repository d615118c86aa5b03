#!/usr/bin/env bash
# Cross-build beltbox for an ARM box (docs/cross.md).
#
#   cross/build.sh TARGET [--release] [-- CARGO_ARGS...]
#
# TARGET: aarch64-unknown-linux-gnu (Raspberry Pi 4/5, RK3588, i.MX 8M Plus)
#         armv7-unknown-linux-gnueabihf (older 32-bit boxes)
# Installs what the build needs when it is missing (rust target via rustup; Debian's cross
# gcc and libc via apt-get), then runs `cargo build --target TARGET`. CARGO_ARGS go to cargo
# as they are, e.g. `-- --features tflite`. Prints the binary's path and size.
# Honours CARGO_TARGET_DIR. Linkers and runners live in .cargo/config.toml.
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

parse_args "--release" "$@"
target="$TARGET"
profile=debug
cargo_args=()
if [ "${#FLAGS[@]}" -gt 0 ]; then # --release is the only flag parse_args lets through
    profile=release
    cargo_args+=(--release)
fi
cargo_args+=("${PASS[@]}")

say "== prerequisites for $target"
ensure_rust_target "$target"
ensure_apt "${GCC_PKGS[@]}"
command -v "$LINKER" >/dev/null 2>&1 || die "$LINKER not found after installing ${GCC_PKGS[*]}"

say "== cargo build --target $target ${cargo_args[*]}"
cd "$REPO"
t0="$(now)"
cargo build --target "$target" "${cargo_args[@]}" || die "cargo build for $target failed"
bin="$(target_dir)/$target/$profile/beltbox"
[ -f "$bin" ] || die "build finished but $bin is missing"
say "built $bin in $(elapsed "$t0") s"
say "size: $(stat -c %s "$bin") bytes ($(file -b "$bin" 2>/dev/null | cut -d, -f1-2 || echo "file(1) not installed"))"
echo "$bin"
