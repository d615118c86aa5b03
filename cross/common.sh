# Shared by cross/build.sh and cross/test.sh (sourced, not run). Idempotent installers for
# what a cross build and a QEMU test run need; each does nothing when the thing is present.
# shellcheck shell=bash

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$CROSS_DIR/.." && pwd)"
ME="$(basename "$0" .sh)"

die() {
    echo "cross/$ME: error: $*" >&2
    exit 1
}
say() { echo "cross/$ME: $*" >&2; }

# Parses the command line both scripts share, `TARGET [FLAG...] [-- ARGS...]`:
#   $1 the script's own flags (space-separated; anything else starting with - is refused),
#   then the arguments. -h/--help calls the script's `usage` and exits.
# Sets TARGET (and target_facts for it), FLAGS (the flags given), PASS (what followed --)
# and HAVE_PASS (1 when -- was given, even with nothing after it).
parse_args() {
    local allowed=" $1 "
    shift
    TARGET=""
    FLAGS=()
    PASS=()
    HAVE_PASS=0
    while [ "$#" -gt 0 ]; do
        case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            PASS=("$@")
            HAVE_PASS=1
            break
            ;;
        -*)
            case "$allowed" in
            *" $1 "*) FLAGS+=("$1") ;;
            *) die "unknown option '$1' (see cross/$ME.sh --help)" ;;
            esac
            ;;
        *)
            [ -z "$TARGET" ] || die "more than one target given ('$TARGET', '$1')"
            TARGET="$1"
            ;;
        esac
        shift
    done
    target_facts "$TARGET"
}

# Sets, for one supported target triple:
#   GCC_PKGS  Debian packages for linking (cross gcc + cross libc headers/objects)
#   RUN_PKGS  extra Debian packages for running under qemu-user (qemu itself: ensure_qemu)
#   QEMU_ARCH qemu-user's name for the architecture (qemu-$QEMU_ARCH)
#   SYSROOT   Debian's cross sysroot (the -L / QEMU_LD_PREFIX for qemu)
#   LINKER    the cross gcc named in .cargo/config.toml
#   LITERT    the cross/fetch-litert.sh arch, or "" when there is no LiteRT library for it
target_facts() {
    case "$1" in
    aarch64-unknown-linux-gnu)
        GCC_PKGS=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
        # libstdc++6-arm64-cross: libLiteRt.so links libstdc++ (GLIBCXX_3.4.30, gcc 12 has it).
        RUN_PKGS=(libstdc++6-arm64-cross)
        QEMU_ARCH=aarch64
        SYSROOT=/usr/aarch64-linux-gnu
        LINKER=aarch64-linux-gnu-gcc
        LITERT=aarch64
        ;;
    armv7-unknown-linux-gnueabihf)
        GCC_PKGS=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross)
        RUN_PKGS=()
        QEMU_ARCH=arm
        SYSROOT=/usr/arm-linux-gnueabihf
        LINKER=arm-linux-gnueabihf-gcc
        LITERT=""
        ;;
    "")
        die "no target given (supported: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)"
        ;;
    *)
        die "unsupported target '$1' (supported: aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)"
        ;;
    esac
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# ensure_apt PKG...: installs the packages that are not installed yet (apt-get update first).
ensure_apt() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "apt packages present: $*"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages ${missing[*]} and no apt-get to install them (Debian/Ubuntu only)"
    is_root || die "missing packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
    say "installing apt packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        die "apt-get update failed (is the Debian mirror reachable?)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null || die "apt-get install ${missing[*]} failed"
}

# ensure_qemu QEMU_ARCH: qemu-user >= 8.2, whose linux-user emulates /proc/cpuinfo for arm and
# aarch64 (CPU part and Features of the emulated CPU model). Older qemu shows the x86 host's
# file: tract then finds no "Features" line (a warning on every start, no fp16 kernels, no
# NEON on armv7) and picks kernels by a CPU part that is not there. Debian 12 ships 7.2, so
# there it comes from bookworm-backports (10.0), which this adds as an apt source if needed.
QEMU_MIN=8.2
# Empty when qemu-$1 is not installed; never fails (callers run under `set -e -o pipefail`,
# where a missing command in the pipe would end the script with 127 before it installs qemu).
qemu_version() {
    command -v "qemu-$1" >/dev/null 2>&1 || return 0
    "qemu-$1" --version 2>/dev/null | sed -n '1s/.*version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' || true
}
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }
ensure_qemu() {
    local v
    v="$(qemu_version "$1")"
    if [ -n "$v" ] && version_ge "$v" "$QEMU_MIN" &&
        dpkg-query -W -f='${Status}' qemu-user-binfmt 2>/dev/null | grep -q "install ok installed"; then
        say "qemu-$1 $v present"
        return 0
    fi
    local codename=""
    [ -r /etc/os-release ] && codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" = bookworm ]; then
        is_root || die "qemu-user >= $QEMU_MIN is needed (have: ${v:-none}); as root, this script" \
            "installs it from bookworm-backports"
        local src=/etc/apt/sources.list.d/bookworm-backports.sources
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding the bookworm-backports apt source ($src)"
            printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" \
                "Suites: bookworm-backports" "Components: main" \
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$src" ||
                die "cannot write $src"
        fi
        say "installing qemu-user and qemu-user-binfmt from bookworm-backports"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            die "apt-get update failed (is the Debian mirror reachable?)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-user qemu-user-binfmt >/dev/null ||
            die "apt-get install -t bookworm-backports qemu-user qemu-user-binfmt failed"
    else
        ensure_apt qemu-user qemu-user-binfmt
    fi
    v="$(qemu_version "$1")"
    [ -n "$v" ] || die "qemu-$1 not found after installing qemu-user"
    version_ge "$v" "$QEMU_MIN" ||
        say "warning: qemu-$1 $v is older than $QEMU_MIN: /proc/cpuinfo shows the host's CPU," \
            "tract warns on stderr and some CLI tests that expect one line of stderr fail"
    say "qemu-$1 $v present"
}

# ensure_rust_target TRIPLE: the Rust standard library for the target, through rustup.
ensure_rust_target() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust with rustup)"
    if rustc --print sysroot >/dev/null 2>&1 &&
        [ -d "$(rustc --print sysroot)/lib/rustlib/$1/lib" ]; then
        say "rust target present: $1"
        return 0
    fi
    command -v rustup >/dev/null 2>&1 ||
        die "the Rust standard library for $1 is missing and rustup is not installed to add it"
    say "adding rust target $1"
    rustup target add "$1" || die "rustup target add $1 failed"
}

# ensure_binfmt QEMU_ARCH: the kernel hands foreign ELF files to qemu-user, so a test binary
# running under qemu can start the (foreign) beltbox binary as a child process. Uses the
# registration line that Debian's qemu-user-binfmt ships for systemd-binfmt; on machines
# without systemd as PID 1 (containers, CI VMs) we mount binfmt_misc and register it here.
ensure_binfmt() {
    local name="qemu-$1" dir=/proc/sys/fs/binfmt_misc conf="/usr/lib/binfmt.d/qemu-$1.conf"
    if [ -f "$dir/$name" ] && head -n1 "$dir/$name" | grep -q '^enabled' &&
        grep -q '^enabled' "$dir/status" 2>/dev/null; then
        say "binfmt_misc: $name registered"
        return 0
    fi
    is_root || die "binfmt_misc has no enabled '$name' entry and registering one needs root" \
        "(tests that start the beltbox binary would fail with 'Exec format error')"
    if [ ! -e "$dir/register" ]; then
        say "mounting binfmt_misc on $dir"
        mount -t binfmt_misc binfmt_misc "$dir" || die "cannot mount binfmt_misc on $dir"
    fi
    grep -q '^enabled' "$dir/status" || echo 1 >"$dir/status" || die "cannot enable binfmt_misc"
    if [ -f "$dir/$name" ]; then
        echo 1 >"$dir/$name" || die "cannot enable binfmt_misc entry $name"
    else
        [ -f "$conf" ] || die "$conf missing (apt-get install qemu-user-binfmt)"
        say "registering $name with binfmt_misc (from $conf)"
        grep -v '^[#;]' "$conf" | grep -m1 ":$name:" >"$dir/register" ||
            die "cannot register $name with binfmt_misc"
    fi
    say "binfmt_misc: $name registered"
}

# Prints seconds since the epoch with centiseconds, for step timings.
now() { date +%s.%N | cut -c1-13; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

target_dir() { echo "${CARGO_TARGET_DIR:-$REPO/target}"; }
