#!/usr/bin/env bash
# Boot the arm64 image under full-system QEMU and check that beltbox serves (docs/image.md).
#
#   cross/image/boot-test.sh [--no-build] [--out DIR] [--timeout SECONDS] [-- BUILD_ARGS...]
#
# 1. cross/image/build.sh BUILD_ARGS (skipped with --no-build: the image in --out is used)
# 2. a throwaway copy of the image gets three test-only units, written into its ext4 with
#    debugfs (no mount): beltbox-boot-test.service runs beltbox-selftest once beltbox.service
#    is up and writes to /dev/console (FailureAction=poweroff); beltbox-test-proxy.socket
#    relays guest port 8081 to 127.0.0.1:8080 (systemd-socket-proxyd); a connection to guest
#    port 8082 powers the guest off (SuccessAction=poweroff). The shipped image is unchanged.
# 3. qemu-system-aarch64 -M virt -cpu cortex-a72 -m 1024 -smp 2 (TCG) boots kernel + initrd
#    beside the image, with host 127.0.0.1:P1 -> guest 8081 and 127.0.0.1:P2 -> guest 8082
# 4. the host waits for /v2/health/ready through the forwarded port, runs the example
#    inference (top1_label "3"), waits for the guest's RESULT line, powers the guest off
# 5. prints timings: image build, boot to ready, inference latency under emulation
# Why a relay instead of a forward to the guest's 8080: beltbox listens on 127.0.0.1 only and
# its unit allows loopback traffic only (IPAddressAllow=localhost); QEMU's port forward
# arrives from 10.0.2.2. The relay connects from 127.0.0.1, as the scanner software does,
# so the shipped config and sandbox are tested unchanged.
# Exit 0 when everything passed. Logs: .cache/image/boot-test/ (console.log).
set -euo pipefail
IMAGE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cross/common.sh
source "$IMAGE_DIR/../common.sh"
die() {
    echo "cross/image/boot-test: error: $*" >&2
    exit 1
}
say() { echo "cross/image/boot-test: $*" >&2; }

NAME=beltbox-arm64
out="$REPO/.cache/image/out"
build=1
timeout_s=900
build_args=()
while [ "$#" -gt 0 ]; do
    case "$1" in
    -h | --help)
        sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --no-build) build=0 ;;
    --out)
        out="$2"
        shift
        ;;
    --timeout)
        timeout_s="$2"
        shift
        ;;
    --)
        shift
        build_args+=("$@")
        break
        ;;
    *) die "unknown argument '$1' (see cross/image/boot-test.sh --help)" ;;
    esac
    shift
done
is_root || die "run as root (the image build needs it; debugfs writes a root-owned copy)"
t_all="$(now)"

# ---------------------------------------------------------------------------------------
# qemu-system-aarch64: Debian 12's 7.2 conflicts with qemu-user/qemu-utils 10.0 from
# bookworm-backports (which cross/common.sh installs), so take the matching 10.0 packages.
if ! command -v qemu-system-aarch64 >/dev/null 2>&1; then
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    if [ "$codename" = bookworm ] && grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
        say "installing qemu-system-arm from bookworm-backports"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-arm qemu-system-common qemu-system-data >/dev/null ||
            die "apt-get install -t bookworm-backports qemu-system-arm failed"
    else
        ensure_apt qemu-system-arm
    fi
fi
ensure_apt e2fsprogs curl fdisk

build_s="(not built: --no-build)"
if [ "$build" = 1 ]; then
    say "== building the image (cross/image/build.sh ${build_args[*]})"
    t="$(now)"
    bash "$IMAGE_DIR/build.sh" --out "$out" "${build_args[@]}" >/dev/null ||
        die "cross/image/build.sh failed"
    build_s="$(elapsed "$t") s"
fi
img="$out/$NAME.img"
for f in "$img" "$out/$NAME.vmlinuz" "$out/$NAME.initrd" "$out/$NAME.cmdline"; do
    [ -f "$f" ] || die "$f is missing (run cross/image/build.sh first)"
done

# ---------------------------------------------------------------------------------------
say "== preparing a test copy of the image"
work="$REPO/.cache/image/boot-test"
rm -rf "$work"
mkdir -p "$work/units"
test_img="$work/test.img"
cp --sparse=always "$img" "$test_img"
start="$(sfdisk -d "$test_img" | sed -n 's/.*start= *\([0-9]*\),.*name="beltbox-root".*/\1/p')"
[ -n "$start" ] || die "no partition named beltbox-root in $img"
u="$work/units"
cat >"$u/beltbox-boot-test.service" <<'EOF'
[Unit]
Description=beltbox boot test (test copy only)
After=beltbox.service beltbox-test-proxy.socket
Wants=beltbox.service
FailureAction=poweroff
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/beltbox-selftest --wait 300 --runs 5 --journal
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=600
[Install]
WantedBy=multi-user.target
EOF
cat >"$u/beltbox-test-proxy.socket" <<'EOF'
[Unit]
Description=beltbox boot test: relay for the host's port forward (test copy only)
[Socket]
ListenStream=0.0.0.0:8081
[Install]
WantedBy=sockets.target
EOF
cat >"$u/beltbox-test-proxy.service" <<'EOF'
[Unit]
Description=beltbox boot test: relay 8081 -> 127.0.0.1:8080 (test copy only)
Requires=beltbox-test-proxy.socket
After=beltbox-test-proxy.socket
[Service]
ExecStart=/lib/systemd/systemd-socket-proxyd 127.0.0.1:8080
EOF
cat >"$u/beltbox-test-poweroff.socket" <<'EOF'
[Unit]
Description=beltbox boot test: power off when the host connects (test copy only)
[Socket]
ListenStream=0.0.0.0:8082
[Install]
WantedBy=sockets.target
EOF
cat >"$u/beltbox-test-poweroff.service" <<'EOF'
[Unit]
Description=beltbox boot test: host checks done, powering off (test copy only)
SuccessAction=poweroff
FailureAction=poweroff
[Service]
Type=oneshot
ExecStart=/bin/true
EOF
chmod 644 "$u"/*
{
    echo "cd /etc/systemd/system"
    for f in "$u"/*; do echo "write $f $(basename "$f")"; done
    echo "mkdir sockets.target.wants"
    echo "symlink multi-user.target.wants/beltbox-boot-test.service /etc/systemd/system/beltbox-boot-test.service"
    echo "symlink sockets.target.wants/beltbox-test-proxy.socket /etc/systemd/system/beltbox-test-proxy.socket"
    echo "symlink sockets.target.wants/beltbox-test-poweroff.socket /etc/systemd/system/beltbox-test-poweroff.socket"
} >"$work/debugfs.cmds"
debugfs -w -f "$work/debugfs.cmds" "$test_img?offset=$((start * 512))" >"$work/debugfs.log" 2>&1 ||
    die "debugfs could not write the test units (see $work/debugfs.log)"
debugfs -R "ls -l /etc/systemd/system/multi-user.target.wants" "$test_img?offset=$((start * 512))" 2>/dev/null |
    grep -q beltbox-boot-test.service || die "the test units did not land in the image ($work/debugfs.log)"

# ---------------------------------------------------------------------------------------
free_port() {
    local p
    while :; do
        p="$(shuf -i 20000-60000 -n 1)"
        ss -Htln "sport = :$p" | grep -q . || {
            echo "$p"
            return
        }
    done
}
http_port="$(free_port)"
off_port="$(free_port)"
[ "$http_port" != "$off_port" ] || off_port=$((http_port + 1))
console="$work/console.log"
say "== booting: qemu-system-aarch64 -M virt -cpu cortex-a72 -m 1024 -smp 2 (TCG);" \
    "127.0.0.1:$http_port -> guest 8081 (relay to 127.0.0.1:8080), 127.0.0.1:$off_port -> 8082 (power off)"
t_boot="$(now)"
nice -n 10 qemu-system-aarch64 -M virt -cpu cortex-a72 -m 1024 -smp 2 \
    -kernel "$out/$NAME.vmlinuz" -initrd "$out/$NAME.initrd" -append "$(cat "$out/$NAME.cmdline")" \
    -drive "file=$test_img,format=raw,if=none,id=disk0" -device virtio-blk-pci,drive=disk0 \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$http_port-:8081,hostfwd=tcp:127.0.0.1:$off_port-:8082" \
    -device virtio-net-pci,netdev=net0,romfile= \
    -display none -monitor none -serial "file:$console" -no-reboot \
    >"$work/qemu.log" 2>&1 &
qemu_pid=$!
cleanup() {
    if kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
deadline=$(($(date +%s) + timeout_s))
alive() { kill -0 "$qemu_pid" 2>/dev/null; }
fail() {
    say "FAIL: $*"
    if grep -a -q 'beltbox-selftest: ' "$console"; then
        say "the guest's beltbox-selftest said:"
        grep -a -o 'beltbox-selftest: .*' "$console" | tr -d '\r' | sed 's/^/    /' >&2
    else
        say "last console lines ($console):"
        tail -n 40 "$console" | sed 's/^/    /' >&2
    fi
    exit 1
}

# Ready as the host sees it: through the forward and the relay, /v2/health/ready is 200.
ready_s=""
while [ -z "$ready_s" ]; do
    alive || fail "the guest stopped before beltbox was ready"
    [ "$(date +%s)" -lt "$deadline" ] || fail "no ready answer within $timeout_s s"
    code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$http_port/v2/health/ready" || true)"
    if [ "$code" = 200 ]; then ready_s="$(elapsed "$t_boot")"; else sleep 2; fi
done
say "ready through the forwarded port $ready_s s after qemu started"

# Inference from the host, through the forwarded port.
req="$REPO/docs/examples/infer-digits.json"
lat=()
for i in 1 2 3 4 5; do
    r="$(curl -s -o "$work/infer.json" -w '%{http_code} %{time_total}' --max-time 60 \
        -H 'Content-Type: application/json' --data-binary @"$req" \
        "http://127.0.0.1:$http_port/v2/models/digits-int8-qdq/infer" || true)"
    label="$(grep -o '"top1_label": *"[^"]*"' "$work/infer.json" | sed 's/.*"\([^"]*\)"$/\1/' || true)"
    [ "${r%% *}" = 200 ] && [ "$label" = 3 ] ||
        fail "host inference $i: HTTP ${r%% *}, top1_label '$label': $(head -c 300 "$work/infer.json")"
    lat+=("${r#* }")
done
server_total_us="$(grep -o '"total_us": *[0-9]*' "$work/infer.json" | grep -o '[0-9]*$' || true)"
infer_host="$(printf '%s\n' "${lat[@]}" | sort -n |
    awk '{ a[NR] = $1 } END { printf "min %.0f ms, median %.0f ms, max %.0f ms", a[1] * 1000, a[3] * 1000, a[5] * 1000 }')"
say "host inference through the forward: top1_label \"3\" x5 ($infer_host)"

# The guest's own checks (beltbox-selftest on /dev/console).
while ! grep -q 'beltbox-selftest: RESULT' "$console"; do
    alive || fail "the guest stopped before beltbox-selftest reported"
    [ "$(date +%s)" -lt "$deadline" ] || fail "beltbox-selftest did not report within $timeout_s s"
    sleep 2
done
# The console is shared with kernel and systemd messages: keep only the selftest's lines.
grep -a -o 'beltbox-selftest: .*' "$console" | tr -d '\r' >"$work/selftest.log"
sed 's/^/    /' "$work/selftest.log" >&2
grep -q 'beltbox-selftest: RESULT PASS' "$work/selftest.log" || fail "beltbox-selftest failed in the guest"
guest_metric() { sed -n "s/^beltbox-selftest: metric $1=//p" "$work/selftest.log" | head -n1; }

# Clean power-off: the guest's systemd stops beltbox (SIGTERM, drain, exit 0) and halts.
say "== powering off"
t_off="$(now)"
(exec 3<>"/dev/tcp/127.0.0.1/$off_port") 2>/dev/null || fail "cannot reach the power-off port"
off_deadline=$(($(date +%s) + 180))
while alive; do
    [ "$(date +%s)" -lt "$off_deadline" ] || fail "the guest did not power off within 180 s"
    sleep 1
done
wait "$qemu_pid" || fail "qemu exited with status $?"
trap - EXIT
off_s="$(elapsed "$t_off")"
grep -a -q 'reboot: Power down' "$console" || fail "no 'reboot: Power down' on the console"
# systemd's status lines on the console carry colour codes: strip them before matching.
sed 's/\x1b\[[0-9;]*m//g' "$console" | tr -d '\r' >"$work/console.txt"
grep -q '\[  OK  \] Started beltbox.service' "$work/console.txt" ||
    fail "no '[  OK  ] Started beltbox.service' on the console"
stop_line="$(grep -o '\[  OK  \] Stopped beltbox.service.*' "$work/console.txt" | head -n1 || true)"
[ -n "$stop_line" ] || fail "beltbox.service did not stop cleanly at power-off (console.txt)"

total_s="$(elapsed "$t_all")"
cat >&2 <<EOF

cross/image/boot-test: PASS
  image build                         $build_s
  qemu start -> ready via forward     $ready_s s
  kernel start -> READY=1 (guest)     $(guest_metric boot_to_ready_s) s   (beltbox start -> READY=1: $(guest_metric start_to_ready_s) s)
  inference, host via forward+relay   $infer_host
  inference, guest loopback (curl)    $(guest_metric infer_http_ms | tr ',' ' ') ms
  inference, server total_us          $(awk -v u="${server_total_us:-0}" 'BEGIN { printf "%.1f ms", u / 1000 }') (last host request)
  beltbox memory after the test       $(guest_metric memory_current_mib) MiB (MemoryMax $(guest_metric memory_max))
  power-off                           $off_s s ($stop_line)
  total                               $total_s s
  (OTA install/rollback: not tested, the OTA issue has not landed)
  (QEMU TCG emulation: latencies are for function, not performance)
EOF
