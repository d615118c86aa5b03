#!/usr/bin/env bash
# Run beltbox's tests for an ARM target under qemu-user (docs/cross.md).
#
#   cross/test.sh TARGET [-- CARGO_TEST_ARGS...]
#
# aarch64-unknown-linux-gnu: the whole suite with the LiteRT backend
#   (`cargo test --features tflite`, LiteRT's aarch64 library from cross/fetch-litert.sh)
#   on cortex-a72 (no dot-product: tract's SMLAL int8 kernels), then on cortex-a76
#   (FEAT_DotProd: tract's SDOT kernels) the tests that compute with those kernels (unit
#   tests, golden, onnx_ops, inputs_and_dtypes, accuracy, tflite_backend); the
#   service, CLI, plan and packaging tests do not depend on the CPU model and run once.
# armv7-unknown-linux-gnueabihf: the golden-model tests (`cargo test --test golden`; there is
#   no armv7 LiteRT library) on a Cortex-A7 with tract's NEON kernels, then with its generic
#   kernels (TRACT_CPU_ARM32_NEON=false).
#
# CARGO_TEST_ARGS replace the default selection (`--features tflite` / `--test golden`),
# e.g. `cross/test.sh aarch64-unknown-linux-gnu -- --features tflite --test golden`.
# BELTBOX_QEMU_CPUS="cortex-a72 cortex-a76" overrides the CPU models (armv7: one model);
# each then runs the whole selection.
# Installs what it needs when missing (as cross/build.sh, plus qemu-user >= 8.2 — from
# bookworm-backports on Debian 12 — and a binfmt_misc entry so that a test can start the
# foreign beltbox binary). Honours CARGO_TARGET_DIR.
set -euo pipefail
# shellcheck source=cross/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

parse_args "" "$@"
target="$TARGET"

# Each run: a label and the environment it adds (KEY=VALUE words). One run may take only a
# subset of the test targets (subset_run, subset_args).
runs=()
subset_run=""
subset_args=()
case "$target" in
aarch64-unknown-linux-gnu)
    default_args=(--features tflite)
    for cpu in ${BELTBOX_QEMU_CPUS:-cortex-a72 cortex-a76}; do
        runs+=("QEMU_CPU=$cpu")
    done
    if [ -z "${BELTBOX_QEMU_CPUS:-}" ]; then
        subset_run="QEMU_CPU=cortex-a76"
        # Not real_models (155 s): the same int8 kernels run under golden, onnx_ops and
        # accuracy here, and CI's minutes pay for fuzzing (docs/cross.md).
        subset_args=(--lib --test golden --test onnx_ops --test inputs_and_dtypes
            --test accuracy --test tflite_backend)
    fi
    ;;
armv7-unknown-linux-gnueabihf)
    default_args=(--test golden)
    # Cortex-A7 (tract's NEON kernels tuned for it), then the same with NEON switched off in
    # tract (its generic Rust kernels, as on a board without NEON).
    cpu="${BELTBOX_QEMU_CPUS:-cortex-a7}"
    cpu="${cpu%% *}"
    runs+=("QEMU_CPU=$cpu" "QEMU_CPU=$cpu TRACT_CPU_ARM32_NEON=false")
    ;;
esac
if [ "$HAVE_PASS" -eq 1 ]; then
    args=("${PASS[@]}")
else
    args=("${default_args[@]}")
fi

say "== prerequisites for $target"
ensure_rust_target "$target"
ensure_apt "${GCC_PKGS[@]}" "${RUN_PKGS[@]}"
command -v "$LINKER" >/dev/null 2>&1 || die "$LINKER not found after installing ${GCC_PKGS[*]}"
ensure_qemu "$QEMU_ARCH"
ensure_binfmt "$QEMU_ARCH"
if [ -n "$LITERT" ] && [[ " ${args[*]} " == *tflite* ]]; then
    bash "$CROSS_DIR/fetch-litert.sh" "$LITERT" >/dev/null ||
        die "could not fetch the LiteRT library for $LITERT"
fi

cd "$REPO"
say "== build tests: cargo test --target $target ${args[*]} --no-run"
t0="$(now)"
cargo test --target "$target" "${args[@]}" --no-run || die "building the tests for $target failed"
say "tests built in $(elapsed "$t0") s"

summary=()
failed=()
for run in "${runs[@]}"; do
    say "== tests under qemu-$QEMU_ARCH, $run: cargo test --target $target ${args[*]}"
    t0="$(now)"
    run_args=("${args[@]}")
    if [ "$HAVE_PASS" -eq 0 ] && [ "$run" = "$subset_run" ]; then
        run_args+=("${subset_args[@]}")
        say "   (the CPU-dependent tests: ${subset_args[*]})"
    fi
    # shellcheck disable=SC2086 # $run is KEY=VALUE words
    if env $run cargo test --target "$target" --no-fail-fast "${run_args[@]}"; then
        summary+=("ok     $run  $(elapsed "$t0") s")
    else
        summary+=("FAILED $run  $(elapsed "$t0") s")
        failed+=("$run")
    fi
done

say "== summary ($target)"
for line in "${summary[@]}"; do
    say "  $line"
done
[ "${#failed[@]}" -eq 0 ] || die "tests failed under qemu-$QEMU_ARCH with: ${failed[*]}"
say "all runs passed"
