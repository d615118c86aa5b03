#!/usr/bin/env bash
# Fetch the LiteRT C library (libLiteRt.so) that beltbox's `tflite` feature loads at run time.
#
#   cross/fetch-litert.sh [ARCH...]      ARCH: x86_64 | aarch64   (default: both)
#
# The library comes from the ai-edge-litert wheel on PyPI (pinned version, pinned wheel sha256,
# pinned library sha256). Only libLiteRt.so is extracted: it is self-contained (it needs only
# glibc, libstdc++ and libgcc_s; none of the wheel's other .so files). It lands in
#   <repo>/.cache/litert/<arch>/libLiteRt.so
# next to libLiteRt.so.version (a one-line provenance note read by beltbox's runtime_version()).
#
# Idempotent: an arch whose library is present and matches its pinned sha256 is not downloaded
# again. Needs: bash, python3 with pip (for `pip download`), sha256sum. Runs offline only when
# everything is already in place.
#
# Runtime requirements of the library (checked with objdump -T):
#   x86_64 : glibc >= 2.27, libstdc++ >= GLIBCXX_3.4.22
#   aarch64: glibc >= 2.34, libstdc++ >= GLIBCXX_3.4.30 (Debian 12 / Ubuntu 22.04 or newer),
#            although the wheel is tagged manylinux_2_27.
set -euo pipefail

LITERT_VERSION="2.1.4"
PY_VERSION="3.11"

die() {
    echo "fetch-litert: error: $*" >&2
    exit 1
}
say() { echo "fetch-litert: $*" >&2; }

# Per-arch pins: platform tag, wheel file name, wheel sha256, libLiteRt.so sha256.
pins() {
    case "$1" in
    x86_64)
        PLATFORM="manylinux_2_27_x86_64"
        WHEEL="ai_edge_litert-${LITERT_VERSION}-cp311-cp311-manylinux_2_27_x86_64.whl"
        WHEEL_SHA256="1bed8ccd8dfc4f2ec388bc79cb90920c261a244995ce378d396fb8967b7db640"
        LIB_SHA256="c590f1124053ce6d2ceaef6d1174af15f8103a76872059414d18ff2e9cfaf681"
        ;;
    aarch64)
        PLATFORM="manylinux_2_27_aarch64"
        WHEEL="ai_edge_litert-${LITERT_VERSION}-cp311-cp311-manylinux_2_27_aarch64.whl"
        WHEEL_SHA256="f2f07d27211a6b64ed374733bcbdd78dcf0cdc70de5c5f7d0ce7f198d4890a23"
        LIB_SHA256="332b30e12a0708279c44e883639ac4caa435f18f6333fc4f35f8293a90ea9819"
        ;;
    arm64)
        pins aarch64
        ;;
    *)
        die "unknown arch '$1' (supported: x86_64, aarch64)"
        ;;
    esac
}

LIB_IN_WHEEL="ai_edge_litert/libLiteRt.so"
LIB_NAME="libLiteRt.so"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
CACHE="$REPO/.cache/litert"

command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (install coreutils)"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

find_python() {
    local py
    for py in python3 python; do
        if command -v "$py" >/dev/null 2>&1; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

pip_download() { # <platform> <dest dir>
    local py
    py="$(find_python)" || die "python3 not found; it is needed for 'pip download' (apt-get install python3-pip)"
    "$py" -m pip --version >/dev/null 2>&1 ||
        die "'$py -m pip' does not work; install pip (apt-get install python3-pip)"
    # --no-deps/--only-binary: we want exactly this wheel, never a source build.
    # PIP_REQUIRE_VIRTUALENV would refuse to run outside a venv; download does not install.
    PIP_REQUIRE_VIRTUALENV=0 "$py" -m pip download \
        --disable-pip-version-check --no-deps --only-binary=:all: \
        --platform "$1" --python-version "$PY_VERSION" \
        "ai-edge-litert==${LITERT_VERSION}" -d "$2" >&2 ||
        die "pip download of ai-edge-litert==${LITERT_VERSION} for $1 failed (is PyPI reachable?)"
}

extract_member() { # <wheel> <member> <out file>
    local py
    py="$(find_python)" || die "python3 not found"
    "$py" - "$1" "$2" "$3" <<'PY' || die "could not extract $2 from $1"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

fetch_arch() {
    local arch="$1"
    pins "$arch"
    [ "$arch" = arm64 ] && arch=aarch64
    local dest_dir="$CACHE/$arch"
    local dest="$dest_dir/$LIB_NAME"
    local note="ai-edge-litert ${LITERT_VERSION} (${WHEEL}, wheel sha256 ${WHEEL_SHA256}), ${LIB_NAME} sha256 ${LIB_SHA256}"

    if [ -f "$dest" ]; then
        if [ "$(sha_of "$dest")" = "$LIB_SHA256" ]; then
            printf '%s\n' "$note" >"$dest.version"
            say "$arch: already present and verified"
            echo "$dest"
            return 0
        fi
        say "$arch: $dest does not match the pinned sha256; fetching again"
    fi

    mkdir -p "$dest_dir" || die "cannot create $dest_dir"
    local tmp="$TMP_ROOT/$arch"
    mkdir -p "$tmp" || die "cannot create $tmp"

    say "$arch: downloading ai-edge-litert==${LITERT_VERSION} ($PLATFORM) from PyPI"
    pip_download "$PLATFORM" "$tmp"
    local wheel="$tmp/$WHEEL"
    [ -f "$wheel" ] || die "pip did not produce the expected wheel $WHEEL (got: $(ls "$tmp" | tr '\n' ' '))"

    local got
    got="$(sha_of "$wheel")"
    [ "$got" = "$WHEEL_SHA256" ] ||
        die "$WHEEL: sha256 mismatch: expected $WHEEL_SHA256, got $got (refusing to use it)"

    extract_member "$wheel" "$LIB_IN_WHEEL" "$tmp/$LIB_NAME"
    got="$(sha_of "$tmp/$LIB_NAME")"
    [ "$got" = "$LIB_SHA256" ] ||
        die "$LIB_IN_WHEEL in $WHEEL: sha256 mismatch: expected $LIB_SHA256, got $got"

    chmod 0644 "$tmp/$LIB_NAME"
    mv -f "$tmp/$LIB_NAME" "$dest.partial" && mv -f "$dest.partial" "$dest" ||
        die "could not install $dest"
    printf '%s\n' "$note" >"$dest.version"
    say "$arch: installed $dest"
    echo "$dest"
}

main() {
    local archs=("$@")
    if [ "${#archs[@]}" -eq 0 ]; then
        archs=(x86_64 aarch64)
    fi
    local a
    for a in "${archs[@]}"; do
        case "$a" in
        -h | --help)
            sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        esac
    done
    TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/fetch-litert.XXXXXX")" || die "mktemp failed"
    trap 'rm -rf "$TMP_ROOT"' EXIT
    for a in "${archs[@]}"; do
        fetch_arch "$a"
    done
}

main "$@"
