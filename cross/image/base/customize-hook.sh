#!/bin/sh
# mmdebstrap --customize-hook: runs on the host after all packages are installed; $1 is the
# root. Only package-level tidying lives here (it is part of the cached base); everything
# beltbox-specific is applied per image build by cross/image/build.sh.
set -eu
# Each device generates its own machine-id on first boot (empty file = not yet set; systemd
# commits it once / is writable). systemd-firstboot would prompt on the console: masked.
: >"$1/etc/machine-id"
rm -f "$1/var/lib/dbus/machine-id"
ln -sf /dev/null "$1/etc/systemd/system/systemd-firstboot.service"
# An offline box must not wake up at night to refresh apt indexes.
ln -sf /dev/null "$1/etc/systemd/system/apt-daily.timer"
ln -sf /dev/null "$1/etc/systemd/system/apt-daily-upgrade.timer"
rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"* "$1/var/log/"*.log
if [ -n "${BELTBOX_QEMU_INTERP:-}" ]; then
	rm -f "$1$BELTBOX_QEMU_INTERP"
	rmdir "$1$(dirname "$BELTBOX_QEMU_INTERP")" 2>/dev/null || true
fi
