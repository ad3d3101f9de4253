
# -- provisioning script given to `crc bootstrap --then` ------------------------------
step "running the provisioning script"
report "running the provisioning script"
cat >"$CRC_TMP/then.sh" <<'{{THEN_EOF}}'
{{THEN_SCRIPT}}
{{THEN_EOF}}
chmod 0700 "$CRC_TMP/then.sh"
THEN_RC=0
(cd / && PATH="$CRC_PREFIX/venv/bin:$PATH" CRC_GROUP="$CRC_GROUP" CRC_MACHINE="$CRC_MACHINE" \
    CRC_AGENT_STATE_DIR="$CRC_STATE_DIR" bash "$CRC_TMP/then.sh") || THEN_RC=$?
[ "$THEN_RC" = 0 ] || fail "$THEN_RC" "the provisioning script failed (exit $THEN_RC)"
report "provisioning script done"
