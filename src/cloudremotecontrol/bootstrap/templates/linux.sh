#!/bin/bash
# CloudRemoteControl bootstrap for machine {{MACHINE_TEXT}} of group {{GROUP_TEXT}}
# (written by `crc bootstrap`, crc {{VERSION}}).
#
# Run it once as root: a Vultr startup script, cloud-init user data, or by hand. Running
# it again changes nothing. It installs python3 if missing, fetches the agent from the
# server over TLS pinned to the fingerprint below (before the key is used at all), puts
# it in a venv under /opt/crc-agent, enrolls with the single-use key (worthless once
# used), and starts the crc-agent systemd unit. Log: /var/log/crc-bootstrap.log.
set -Eeuo pipefail
umask 077

CRC_URL={{URL}}
CRC_FINGERPRINT={{FINGERPRINT}}
CRC_GROUP={{GROUP}}
CRC_MACHINE={{MACHINE}}
CRC_KEY={{KEY}}
CRC_PREFIX=${CRC_PREFIX:-/opt/crc-agent}
CRC_CONFIG_DIR=${CRC_CONFIG_DIR:-/etc/crc-agent}
CRC_STATE_DIR=${CRC_STATE_DIR:-/var/lib/crc-agent}
CRC_LOG=${CRC_BOOTSTRAP_LOG:-/var/log/crc-bootstrap.log}
CRC_BIN_LINK=${CRC_BIN_LINK:-/usr/local/bin/crc}
CRC="$CRC_PREFIX/venv/bin/crc"
STEP="starting"
AGENT_UP=0
DONE_STEPS=()

say() {
    printf 'crc-bootstrap: %s\n' "$*" >&2
    printf '%s crc-bootstrap: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$CRC_LOG" 2>/dev/null || true
}

step() {
    STEP=$1
    say "$1"
}

# Progress reaches the master only through the agent, so steps before it runs are
# collected and reported as soon as it is up.
report() {
    if [ "$AGENT_UP" = 1 ]; then
        "$CRC" agent progress --state-dir "$CRC_STATE_DIR" "$@" >/dev/null 2>>"$CRC_LOG" \
            || say "warning: could not report progress to the agent"
    else
        DONE_STEPS+=("$1")
    fi
}

fail() {
    local code=$1
    shift
    trap - ERR
    say "error: $*"
    if [ "$AGENT_UP" = 1 ]; then
        "$CRC" agent progress --state-dir "$CRC_STATE_DIR" "bootstrap failed: $*" \
            >/dev/null 2>&1 || true
        "$CRC" agent emit --state-dir "$CRC_STATE_DIR" bootstrap.failed "$(
            "$CRC_PREFIX/venv/bin/python" -I -c 'import json, sys
print(json.dumps({"step": sys.argv[1], "exit_code": int(sys.argv[2]), "message": sys.argv[3]}))' \
                "$STEP" "$code" "$*")" >/dev/null 2>&1 || true
    else
        say "the agent is not running, so the master sees no progress: see $CRC_LOG"
    fi
    exit "$code"
}

trap 'fail $? "step \"$STEP\" failed (exit $?, line $LINENO; see $CRC_LOG)"' ERR

CRC_TMP=$(mktemp -d)
cleanup() {
    rm -rf "$CRC_TMP"
    # The key is single use and in this script anyway: never leave a copy lying around.
    rm -f "$CRC_CONFIG_DIR/key" "$CRC_CONFIG_DIR/key.tmp"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail 2 "run this script as root (it installs a system service)"
mkdir -p "$(dirname "$CRC_LOG")" && touch "$CRC_LOG" && chmod 0600 "$CRC_LOG" || true
say "bootstrap of machine $CRC_MACHINE of group $CRC_GROUP, server $CRC_URL"

# -- 1. python3 >= 3.10 ---------------------------------------------------------------
find_python() {
    local c
    for c in python3 python3.13 python3.12 python3.11 python3.10; do
        if command -v "$c" >/dev/null 2>&1 \
                && "$c" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

install_python() {
    if command -v apt-get >/dev/null 2>&1; then
        # The lock timeout waits for unattended-upgrades, busy on many images at first boot.
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q \
            && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
                python3
    elif command -v dnf >/dev/null 2>&1; then
        # EL8's python3 is 3.6: fall back to the newer versioned packages.
        dnf install -y python3 && find_python >/dev/null \
            || dnf install -y python3.12 || dnf install -y python3.11
    elif command -v yum >/dev/null 2>&1; then
        yum install -y python3 && find_python >/dev/null || yum install -y python3.11
    elif command -v zypper >/dev/null 2>&1; then
        zypper --non-interactive install python3 && find_python >/dev/null \
            || zypper --non-interactive install python311
    elif command -v apk >/dev/null 2>&1; then
        apk add --no-cache python3
    elif command -v pacman >/dev/null 2>&1; then
        pacman -Sy --noconfirm python
    else
        return 1
    fi
}

step "looking for python3 >= 3.10"
if ! PY=$(find_python); then
    step "installing python3 with the distribution's package manager"
    install_python >>"$CRC_LOG" 2>&1 || true
    PY=$(find_python) || fail 3 "python3 >= 3.10 is missing and could not be installed (see $CRC_LOG)"
fi
PY_VERSION=$("$PY" -c 'import platform; print(platform.python_version())')
report "python $PY_VERSION at $PY"

# -- 2. the agent, from the server, over the pinned connection ------------------------
step "fetching the agent from $CRC_URL${CRC_FINGERPRINT:+ (TLS pinned to $CRC_FINGERPRINT)}"
cat >"$CRC_TMP/fetch_agent.py" <<'CRC_FETCH_AGENT_PY'
{{FETCH_AGENT_PY}}
CRC_FETCH_AGENT_PY
FETCH=$("$PY" -I "$CRC_TMP/fetch_agent.py" --url "$CRC_URL" --fingerprint "$CRC_FINGERPRINT" \
        --prefix "$CRC_PREFIX") \
    || fail $? "could not fetch the agent from $CRC_URL (see above); the key was not used"
read -r FETCH_STATUS AGENT_VERSION <<<"$FETCH"
report "agent $AGENT_VERSION installed in $CRC_PREFIX ($FETCH_STATUS)"

# -- 3. enrollment key (only until enrolled) and service ------------------------------
KEY_ARGS=()
if [ -s "$CRC_STATE_DIR/credential.json" ]; then
    step "already enrolled (credential in $CRC_STATE_DIR): the key is not needed"
else
    step "writing the enrollment key to $CRC_CONFIG_DIR/key (mode 0600)"
    install -d -m 0700 "$CRC_CONFIG_DIR"
    printf '%s\n' "$CRC_KEY" >"$CRC_CONFIG_DIR/key.tmp"
    chmod 0600 "$CRC_CONFIG_DIR/key.tmp"
    mv -f "$CRC_CONFIG_DIR/key.tmp" "$CRC_CONFIG_DIR/key"
    KEY_ARGS=(--key-file "$CRC_CONFIG_DIR/key")
fi

step "installing and starting the crc-agent service"
INSTALL_ARGS=(agent install --url "$CRC_URL" --state-dir "$CRC_STATE_DIR" --gate-ready)
[ -z "$CRC_FINGERPRINT" ] || INSTALL_ARGS+=(--fingerprint "$CRC_FINGERPRINT")
[ "$FETCH_STATUS" != changed ] || INSTALL_ARGS+=(--restart)
"$CRC" "${INSTALL_ARGS[@]}" ${KEY_ARGS[@]+"${KEY_ARGS[@]}"} \
    || fail $? "could not enroll or start the agent (see above)"
AGENT_UP=1

if [ "$(readlink "$CRC_BIN_LINK" 2>/dev/null || true)" != "$CRC" ]; then
    if [ -e "$CRC_BIN_LINK" ] && [ ! -L "$CRC_BIN_LINK" ]; then
        say "warning: $CRC_BIN_LINK exists and is not ours: use $CRC in scripts"
    else
        # A directory on PATH, made readable to all (not with the script's umask 077).
        (umask 022 && mkdir -p "$(dirname "$CRC_BIN_LINK")")
        ln -sfn "$CRC" "$CRC_BIN_LINK"
    fi
fi

for done_step in ${DONE_STEPS[@]+"${DONE_STEPS[@]}"}; do
    report "$done_step"
done
report "crc-agent service running (machine $CRC_MACHINE)"
{{THEN}}
# -- the end: SystemReady ---------------------------------------------------------------
STEP="saying ready"
"$CRC" agent ready --state-dir "$CRC_STATE_DIR"
say "done: machine $CRC_MACHINE of group $CRC_GROUP is ready"
