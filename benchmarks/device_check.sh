#!/usr/bin/env bash
# Device check (issue 12): one command for a GPU machine, offline, under 9 minutes, one JSON.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: bash benchmarks/device_check.sh [--tiny] [--deadline=S] [--only=PART,...] [--out=FILE]
       bash benchmarks/device_check.sh --prepare

Runs benchmarks/device_check.py (the project's train step at batch 128 and 32, each seeds mode at
batch 32 with 5 seeds, the steady-state 19x19 sweep, inference at 512, a minimal Flax VGG16
reference, compile times, ratios) and prints one JSON object on stdout; logs go to stderr.

  (no flag)   paper sizes (VGG16, 224 px): a GPU, ~5 min (estimated); no part starts after 420 s, a
              watchdog prints what is done at 480 s, so it always ends under 9 min.
  --tiny      the same parts at CPU sizes (VGG16 at 1/32 width, 32 px): about 1 min on 2 cores.
  --prepare   run here, with network: fill the git-ignored .wheels/ with the wheels the import
              path needs that GPU machines lack (ml-collections; PyYAML as a fallback).

Offline: nothing is fetched. A module the import path needs that this Python lacks is installed
from .wheels/ (pip --no-index) into a private folder under $TMPDIR; the repository goes on
PYTHONPATH (no pip install of the project, which would need setuptools from the network).
$PYTHON picks the interpreter (default python3).
EOF
}

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${DEVICE_CHECK_WHEELS:-.wheels}  # another folder only for tests
# module to import -> the distribution in .wheels that provides it
NEEDED=("ml_collections:ml-collections" "yaml:PyYAML")

prepare() {
  rm -rf "$WHEELS"
  mkdir -p "$WHEELS"
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" ml-collections
  # PyYAML (ml_collections imports it) has compiled wheels: one per CPython a GPU image may have.
  for v in 3.10 3.11 3.12 3.13; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp \
      --python-version "$v" --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" PyYAML
  done
  ls -l "$WHEELS" >&2
}

# Installs from .wheels/ whatever of NEEDED this Python cannot import; prints the folder to add to
# PYTHONPATH (empty when nothing was missing).
install_missing() {
  local missing=() pair site
  for pair in "${NEEDED[@]}"; do
    if ! "$PY" -c "import ${pair%%:*}" 2>/dev/null; then
      missing+=("${pair#*:}")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "device_check: ${missing[*]} missing and no $WHEELS/: run 'bash $0 --prepare' where" \
      "there is network, and carry $WHEELS along" >&2
    return 1
  fi
  site="${TMPDIR:-/tmp}/transinv_jax_device_site"
  if "$PY" -m pip --version >/dev/null 2>&1; then
    echo "device_check: installing ${missing[*]} from $WHEELS into $site" >&2
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" --find-links "$WHEELS" "${missing[@]}" >&2
    echo "$site"
  else  # no pip: pure-Python wheels import from the zip files themselves
    echo "device_check: no pip; putting the pure-Python wheels of $WHEELS on PYTHONPATH" >&2
    local w paths=""
    for w in "$(cd "$WHEELS" && pwd)"/*-none-any.whl; do paths="$paths${paths:+:}$w"; done
    echo "$paths"
  fi
}

args=()
for a in "$@"; do
  case "$a" in
    --prepare) prepare; exit 0 ;;
    -h | --help) usage; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

site=$(install_missing) || {
  printf '{"error": "%s"}\n' "the import path misses packages that .wheels/ cannot provide (stderr)"
  exit 1
}
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Outer limit, in case Python hangs past its own watchdog: 530 s (tiny 200 s; --deadline + 110).
limit=530 deadline=""
for a in "${args[@]+"${args[@]}"}"; do
  case "$a" in
    --tiny) limit=200 ;;
    --deadline=*) deadline=${a#--deadline=} ;;
  esac
done
if [ -n "$deadline" ]; then limit=$(( ${deadline%%.*} + 110 )); fi
rc=0
out=$(timeout -k 10 "$limit" "$PY" benchmarks/device_check.py "${args[@]+"${args[@]}"}") || rc=$?
if [ -n "$out" ]; then
  printf '%s\n' "$out"
else
  printf '{"error": "%s %s, printing no JSON (see stderr)"}\n' \
    "benchmarks/device_check.py exited with status" "$rc"
fi
exit "$rc"
