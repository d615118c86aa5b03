#!/usr/bin/env bash
# Extract the TfLite C library (TensorFlow Lite 2.6, x86_64) that the `tflitec` 0.7.0 crate
# ships for its docs.rs builds, into <repo>/.cache/tflitec/x86_64/libtensorflowlite_c.so.
#
#   cross/fetch-tflitec-lib.sh
#
# Why: it is the only prebuilt libtensorflowlite_c available from a registry, and it silently
# miscomputes per-channel INT8 FULLY_CONNECTED. Tests load it through beltbox's `tflitec`
# backend to prove that the golden self-check refuses a runtime that computes a model wrongly.
# It is a test fixture, never shipped.
#
# The crate is fetched by cargo itself (a throwaway manifest + `cargo fetch`), so only
# crates.io is contacted. Idempotent: exits at once when the library is present and matches
# its pinned sha256.
set -euo pipefail

CRATE_VERSION="0.7.0"
LIB_SHA256="003736565e81f4de1eaa9e4551791bc3938567338a3f752cd993217050f8fd81"

repo=$(cd "$(dirname "$0")/.." && pwd)
dest="$repo/.cache/tflitec/x86_64"
lib="$dest/libtensorflowlite_c.so"
say() { echo "fetch-tflitec-lib: $*" >&2; }
die() { say "error: $*"; exit 1; }

if [ -f "$lib" ] && echo "$LIB_SHA256  $lib" | sha256sum -c --status; then
    say "present and verified: $lib"
    echo "$lib"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
cat >"$tmp/Cargo.toml" <<TOML
[package]
name = "fetch-tflitec"
version = "0.0.0"
edition = "2021"
[dependencies]
tflitec = "=$CRATE_VERSION"
TOML
: >"$tmp/src/lib.rs"
say "fetching tflitec $CRATE_VERSION from crates.io"
(cd "$tmp" && cargo fetch --quiet) || die "cargo fetch of tflitec $CRATE_VERSION failed"

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
crate=$(find "$cargo_home/registry/cache" -name "tflitec-$CRATE_VERSION.crate" 2>/dev/null | head -n 1)
[ -n "$crate" ] || die "tflitec-$CRATE_VERSION.crate not found under $cargo_home/registry/cache"

mkdir -p "$dest"
python3 - "$crate" "$lib.tmp" <<'PY' || die "could not extract libtensorflowlite_c.so from $crate"
import io, sys, tarfile, zipfile
crate, out = sys.argv[1], sys.argv[2]
with tarfile.open(crate, "r:gz") as t:
    member = next(m for m in t.getmembers() if m.name.endswith("build-res/docsrs_res.zip"))
    data = t.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as z:
    name = next(n for n in z.namelist() if n.endswith("libtensorflowlite_c.so"))
    with open(out, "wb") as f:
        f.write(z.read(name))
PY
echo "$LIB_SHA256  $lib.tmp" | sha256sum -c --status || die "extracted library does not match the pinned sha256"
mv "$lib.tmp" "$lib"
say "installed $lib"
echo "$lib"
