#!/bin/sh
# mmdebstrap --setup-hook: runs on the host before any package is unpacked; $1 is the root.
# 1. The initramfs configuration must be in place before linux-image-arm64's postinst runs
#    update-initramfs (these are not conffiles of any package, so dpkg never asks about them).
# 2. The qemu-user interpreter, at the path binfmt_misc names, when its entry lacks the F
#    ("fix binary") flag: the kernel then opens the interpreter inside the chroot.
set -eu
here="$(dirname "$0")"
mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"
cp "$here/initramfs.conf" "$1/etc/initramfs-tools/conf.d/beltbox-image.conf"
cp "$here/initramfs-hook" "$1/etc/initramfs-tools/hooks/beltbox-image"
chmod 644 "$1/etc/initramfs-tools/conf.d/beltbox-image.conf"
chmod 755 "$1/etc/initramfs-tools/hooks/beltbox-image"
if [ -n "${BELTBOX_QEMU_INTERP:-}" ]; then
	mkdir -p "$1$(dirname "$BELTBOX_QEMU_INTERP")"
	cp "$BELTBOX_QEMU_BIN" "$1$BELTBOX_QEMU_INTERP"
fi
