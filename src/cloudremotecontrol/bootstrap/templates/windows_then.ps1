
# -- provisioning script given to `crc bootstrap --then` --------------------------------
Step 'running the provisioning script'
Report 'running the provisioning script'
$env:CRC_GROUP = $CrcGroup
$env:CRC_MACHINE = $CrcMachine
$env:CRC_AGENT_STATE_DIR = $StateDir
$ThenScript = @'
{{THEN_SCRIPT}}
'@
# Its own process, so that its `exit N` ends it, not this script.
$ThenFile = Join-Path $DataDir 'provision.ps1'
[IO.File]::WriteAllText($ThenFile, $ThenScript)
$rc = Invoke-Native 'powershell.exe' @('-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', $ThenFile)
if ($rc -ne 0) { Fail $rc "the provisioning script failed (exit $rc)" }
Report 'provisioning script done'
