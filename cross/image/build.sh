#!/usr/bin/env bash
# Build the flashable arm64 image of a beltbox box (docs/image.md).
#
#   cross/image/build.sh [--deb FILE] [--out DIR] [--rebuild-base] [--no-compress]
#
# Stages (each prints its time):
#   prereqs  apt packages (mmdebstrap, arch-test, qemu-user, fdisk, bmap-tools, zstd) and the
#            qemu-aarch64 binfmt_misc entry, installed/registered only when missing
#   deb      the arm64 .deb: cross/build.sh aarch64-unknown-linux-gnu --release, then
#            cargo deb --no-build (skipped with --deb FILE)
#   base     Debian 12 arm64 rootfs (systemd, dbus, kernel + small initramfs) by mmdebstrap
#            under qemu-user, cached as .cache/image/base-KEY.tar, KEY = hash of the package
#            list and cross/image/base/*; --rebuild-base makes it again (security updates)
#   rootfs   the cached base + the .deb (dpkg -i in a chroot) + cross/image/rootfs/ overlay
#   disk     ext4 made from the directory (mkfs.ext4 -d, no loop device), put into a GPT
#            disk image; kernel, initrd and kernel command line extracted beside it
#   publish  sha256, .bmap, .img.zst (skipped with --no-compress)
# Output (--out, default .cache/image/out): beltbox-arm64.img, .img.zst, .img.bmap,
# .vmlinuz, .initrd, .cmdline, SHA256SUMS, build-timings.txt.
# Honours CARGO_TARGET_DIR (where cross/build.sh left the binary). Needs root (chroot,
# binfmt_misc, file ownership in the filesystem).
set -euo pipefail
IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cross/common.sh
source "$IMAGE_DIR/../common.sh"
die() {
    echo "cross/image/build: error: $*" >&2
    exit 1
}
say() { echo "cross/image/build: $*" >&2; }

TARGET=aarch64-unknown-linux-gnu
SUITE=bookworm
MIRRORS=(
    "deb http://deb.debian.org/debian $SUITE main"
    "deb http://deb.debian.org/debian $SUITE-updates main"
    "deb http://deb.debian.org/debian-security $SUITE-security main"
)
# The base rootfs. Changing this list (or cross/image/base/*) makes a new cache key.
PACKAGES=(
    systemd systemd-sysv dbus udev kmod
    linux-image-arm64 initramfs-tools zstd e2fsprogs
    iproute2 curl procps less
)
NAME=beltbox-arm64
CACHE="$REPO/.cache/image"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
deb=""
out="$CACHE/out"
rebuild_base=0
compress=1
while [ "$#" -gt 0 ]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --deb)
        [ "$#" -ge 2 ] || die "--deb needs a file"
        deb="$(realpath "$2")"
        shift
        ;;
    --out)
        [ "$#" -ge 2 ] || die "--out needs a directory"
        out="$2"
        shift
        ;;
    --rebuild-base) rebuild_base=1 ;;
    --no-compress) compress=0 ;;
    *) die "unknown argument '$1' (see cross/image/build.sh --help)" ;;
    esac
    shift
done
is_root || die "run as root: the build chroots into the arm64 rootfs and writes root-owned files"
mkdir -p "$CACHE" "$out"
out="$(realpath "$out")"

timings=()
t_all="$(now)"
stage_start() {
    say "== $1"
    t_stage="$(now)"
}
stage_end() {
    local s
    s="$(elapsed "$t_stage")"
    timings+=("$(printf '%-8s %7s s  %s' "$1" "$s" "${2:-}")")
    say "-- $1 done in $s s${2:+ ($2)}"
}

# ---------------------------------------------------------------------------------------
stage_start prereqs
ensure_apt mmdebstrap arch-test qemu-user qemu-user-binfmt fdisk bmap-tools zstd e2fsprogs
ensure_binfmt aarch64
# Without the F flag the kernel opens the interpreter *inside* the chroot: put a copy there
# for the chroot's lifetime (the hooks and the rootfs stage remove it again).
binfmt_entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
export BELTBOX_QEMU_INTERP="" BELTBOX_QEMU_BIN=""
if ! sed -n 's/^flags: //p' "$binfmt_entry" | grep -q F; then
    BELTBOX_QEMU_INTERP="$(sed -n 's/^interpreter //p' "$binfmt_entry")"
    BELTBOX_QEMU_BIN="$(readlink -f "$BELTBOX_QEMU_INTERP")"
    [ -x "$BELTBOX_QEMU_BIN" ] || die "binfmt interpreter $BELTBOX_QEMU_INTERP is missing"
    file -b "$BELTBOX_QEMU_BIN" | grep -q 'static' ||
        die "$BELTBOX_QEMU_BIN is not statically linked, so it cannot run inside the chroot"
    say "binfmt entry has no F flag: copying $BELTBOX_QEMU_BIN into the chroot while building"
fi
stage_end prereqs

# ---------------------------------------------------------------------------------------
stage_start deb
if [ -z "$deb" ]; then
    command -v cargo-deb >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo-deb" ] ||
        die "cargo-deb is not installed (CARGO_TARGET_DIR=/tmp/cargo-deb cargo install cargo-deb --locked)"
    nice -n 10 bash "$REPO/cross/build.sh" "$TARGET" --release >/dev/null ||
        die "cross/build.sh $TARGET --release failed"
    deb="$CACHE/beltbox_arm64.deb"
    (cd "$REPO" && cargo deb --target "$TARGET" --no-build --output "$deb" >/dev/null) ||
        die "cargo deb --target $TARGET --no-build failed"
fi
[ -f "$deb" ] || die "$deb does not exist"
deb_version="$(dpkg-deb -f "$deb" Version)"
[ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || die "$deb is not an arm64 package"
stage_end deb "$(basename "$deb") $deb_version"

# ---------------------------------------------------------------------------------------
key="$(
    {
        printf '%s\n' "$SUITE" "${MIRRORS[@]}" "${PACKAGES[@]}"
        cat "$IMAGE_DIR"/base/*
    } | sha256sum | cut -c1-16
)"
base="$CACHE/base-$key.tar"
stage_start base
if [ "$rebuild_base" = 1 ] || [ ! -s "$base" ]; then
    say "building the base rootfs (cold: ~10 min under qemu-user; cached as $base)"
    export BELTBOX_IMAGE_BASE_DIR="$IMAGE_DIR/base"
    mkdir -p "$CACHE/tmp"
    rm -f "$base.part"
    TMPDIR="$CACHE/tmp" nice -n 10 mmdebstrap --mode=root --variant=minbase --arch=arm64 \
        --format=tar \
        --include="$(
            IFS=,
            echo "${PACKAGES[*]}"
        )" \
        --setup-hook="$IMAGE_DIR/base/setup-hook.sh" \
        --customize-hook="$IMAGE_DIR/base/customize-hook.sh" \
        "$SUITE" "$base.part" "${MIRRORS[@]}" ||
        die "mmdebstrap failed (the log above names the package or hook)"
    mv "$base.part" "$base"
    stage_end base "built $(basename "$base"), $(du -m "$base" | cut -f1) MiB"
else
    stage_end base "cached $(basename "$base")"
fi

# ---------------------------------------------------------------------------------------
stage_start rootfs
work="$CACHE/work"
root="$work/rootfs"
rm -rf "$work"
mkdir -p "$root"
tar -xpf "$base" --numeric-owner --xattrs --xattrs-include='*' -C "$root"
if [ -n "$BELTBOX_QEMU_INTERP" ]; then
    mkdir -p "$root$(dirname "$BELTBOX_QEMU_INTERP")"
    cp "$BELTBOX_QEMU_BIN" "$root$BELTBOX_QEMU_INTERP"
fi
cp "$deb" "$root/tmp/beltbox.deb"
# The postinst enables beltbox.service (multi-user.target.wants) and, seeing no running
# systemd, does not start it: it starts on first boot.
chroot "$root" dpkg -i /tmp/beltbox.deb >"$work/dpkg.log" 2>&1 || {
    cat "$work/dpkg.log" >&2
    die "dpkg -i beltbox.deb failed in the arm64 chroot"
}
rm -f "$root/tmp/beltbox.deb"
[ -L "$root/etc/systemd/system/multi-user.target.wants/beltbox.service" ] ||
    die "the package did not enable beltbox.service"
# The overlay (hostname, network, journald, /etc/issue, beltbox-selftest), owned by root.
tar -C "$IMAGE_DIR/rootfs" --owner=0 --group=0 --numeric-owner -cf - . | tar -xpf - -C "$root"
# The example request beltbox-selftest sends (answers top1_label "3").
mkdir -p "$root/usr/share/beltbox-image"
install -m 644 "$REPO/docs/examples/infer-digits.json" "$root/usr/share/beltbox-image/"
systemctl --root="$root" enable systemd-networkd.service >/dev/null 2>&1 ||
    die "cannot enable systemd-networkd in the image"
if [ -n "${BELTBOX_IMAGE_ROOT_PASSWORD:-}" ]; then
    # Field images keep root locked unless the builder sets a password (console login).
    hash="$(printf '%s\n' "$BELTBOX_IMAGE_ROOT_PASSWORD" | openssl passwd -6 -stdin)"
    chroot "$root" usermod -p "$hash" root
fi
part_uuid="$(cat /proc/sys/kernel/random/uuid)"
fs_uuid="$(cat /proc/sys/kernel/random/uuid)"
disk_uuid="$(cat /proc/sys/kernel/random/uuid)"
printf '%s\n' "# / is the GPT partition labelled beltbox-root" \
    "PARTUUID=$part_uuid / ext4 defaults,errors=remount-ro 0 1" >"$root/etc/fstab"
{
    echo "BELTBOX_IMAGE_BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "BELTBOX_PACKAGE_VERSION=$deb_version"
    echo "BELTBOX_GIT=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)"
    echo "BELTBOX_BASE=$(basename "$base")"
} >"$root/etc/beltbox-image"
if [ -n "$BELTBOX_QEMU_INTERP" ]; then
    rm -f "$root$BELTBOX_QEMU_INTERP"
    rmdir "$root$(dirname "$BELTBOX_QEMU_INTERP")" 2>/dev/null || true
fi
kver="$(ls "$root/lib/modules" | sort -V | tail -n1)"
[ -n "$kver" ] && [ -f "$root/boot/vmlinuz-$kver" ] && [ -f "$root/boot/initrd.img-$kver" ] ||
    die "no kernel/initrd in the rootfs (linux-image-arm64 missing from the base?)"
cp "$root/boot/vmlinuz-$kver" "$out/$NAME.vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/$NAME.initrd"
echo "root=PARTUUID=$part_uuid ro rootwait console=ttyAMA0" >"$out/$NAME.cmdline"
used_mib="$(du -sm --apparent-size "$root" | cut -f1)"
stage_end rootfs "kernel $kver, $used_mib MiB of files"

# ---------------------------------------------------------------------------------------
stage_start disk
# Room for logs, the state directory and OTA model packages: 25 % + 256 MiB, rounded to
# 64 MiB. Partition 1 starts at 1 MiB; 1 MiB at the end holds the backup GPT.
fs_mib=$(((used_mib * 5 / 4 + 256 + 63) / 64 * 64))
img="$out/$NAME.img"
fs="$work/root.ext4"
rm -f "$img" "$fs"
mkfs.ext4 -q -F -L beltbox-root -U "$fs_uuid" -d "$root" "$fs" "${fs_mib}M" >/dev/null ||
    die "mkfs.ext4 -d failed"
truncate -s "$((fs_mib + 2))M" "$img"
sfdisk --quiet --no-reread --no-tell-kernel "$img" <<EOF || die "sfdisk failed"
label: gpt
label-id: $disk_uuid
start=2048, size=$((fs_mib * 2048)), type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE, uuid=$part_uuid, name="beltbox-root"
EOF
dd if="$fs" of="$img" bs=1M seek=1 conv=notrunc,sparse status=none
rm -f "$fs"
stage_end disk "$(basename "$img") $((fs_mib + 2)) MiB, ext4 $fs_mib MiB"

# ---------------------------------------------------------------------------------------
stage_start publish
rm -f "$img.bmap" "$img.zst"
bmaptool -q create -o "$img.bmap" "$img" || die "bmaptool create failed"
if [ "$compress" = 1 ]; then
    nice -n 10 zstd -q -T2 -10 "$img" -o "$img.zst" || die "zstd failed"
fi
(
    cd "$out"
    sha256sum "$NAME.img" $([ "$compress" = 1 ] && echo "$NAME.img.zst") "$NAME.img.bmap" \
        "$NAME.vmlinuz" "$NAME.initrd" >SHA256SUMS
)
sha256sum "$img" | cut -d' ' -f1 >"$img.sha256"
zst_note=""
[ "$compress" = 1 ] && zst_note=", .zst $(du -m "$img.zst" | cut -f1) MiB"
stage_end publish "$(du -m "$img" | cut -f1) MiB allocated$zst_note"
rm -rf "$work"

total="$(elapsed "$t_all")"
{
    printf '%s\n' "${timings[@]}"
    printf '%-8s %7s s\n' total "$total"
} | tee "$out/build-timings.txt" >&2
say "image: $img ($(cat "$img.sha256"))"
echo "$img"
