# CloudRemoteControl bootstrap for machine {{MACHINE_TEXT}} of group {{GROUP_TEXT}}
# (written by `crc bootstrap`, crc {{VERSION}}). Windows PowerShell 5.1 or later, run once
# as Administrator; running it again changes nothing. It installs Python from python.org
# if missing (silent, all users, signature checked), fetches the agent from the server
# over TLS pinned to the fingerprint below (before the key is used at all), puts it under
# Program Files (on that Python's sys.path, no venv: see fetch_agent.py), enrolls with
# the single-use key and registers the crc-agent Windows service (LocalSystem, automatic
# start, restart on failure).
# Log: %ProgramData%\CloudRemoteControl\bootstrap.log
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'  # Invoke-WebRequest is far slower with it
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12

$CrcUrl = {{URL}}
$CrcFingerprint = {{FINGERPRINT}}
$CrcGroup = {{GROUP}}
$CrcMachine = {{MACHINE}}
$CrcKey = {{KEY}}
$PythonVersion = {{PYTHON_VERSION}}
$Prefix = Join-Path $env:ProgramFiles 'CloudRemoteControl'
$DataDir = Join-Path $env:ProgramData 'CloudRemoteControl'
$StateDir = Join-Path $DataDir 'agent'
$KeyFile = Join-Path $DataDir 'key'
$Log = Join-Path $DataDir 'bootstrap.log'
$AgentPython = $null  # from installed.json, once the agent is installed
$Script:Step = 'starting'
$Script:AgentUp = $false
$Script:DoneSteps = New-Object System.Collections.Generic.List[string]

# Only SYSTEM (S-1-5-18) and Administrators (S-1-5-32-544) may read what is in DataDir.
New-Item -ItemType Directory -Force -Path $DataDir | Out-Null
& icacls.exe $DataDir /inheritance:r /grant:r '*S-1-5-18:(OI)(CI)F' '*S-1-5-32-544:(OI)(CI)F' | Out-Null

function Say([string]$Text) {
    $line = "crc-bootstrap: $Text"
    [Console]::Error.WriteLine($line)
    try { Add-Content -Path $Log -Value ("{0:u} {1}" -f (Get-Date), $line) } catch { }
}

function Step([string]$Text) {
    $Script:Step = $Text
    Say $Text
}

# Run a native program; return its exit code (its output goes to the log). PowerShell 5.1
# turns a native program's stderr into errors under 'Stop', hence 'Continue' here.
function Invoke-Native([string]$Exe, [string[]]$Arguments) {
    $saved = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        & $Exe @Arguments 2>&1 | ForEach-Object { Say "  $_" }
        return $LASTEXITCODE
    } finally {
        $ErrorActionPreference = $saved
    }
}

function Invoke-Crc([string[]]$Arguments) {
    return Invoke-Native $AgentPython (@('-I', '-m', 'cloudremotecontrol') + $Arguments)
}

function Report([string]$Text) {
    if ($Script:AgentUp) {
        $rc = Invoke-Crc @('agent', 'progress', '--state-dir', $StateDir, $Text)
        if ($rc -ne 0) { Say 'warning: could not report progress to the agent' }
    } else {
        $Script:DoneSteps.Add($Text)
    }
}

function Fail([int]$Code, [string]$Text) {
    Say "error: $Text"
    if ($Script:AgentUp) {
        Invoke-Crc @('agent', 'progress', '--state-dir', $StateDir, "bootstrap failed: $Text") | Out-Null
        $body = @{ step = $Script:Step; exit_code = $Code; message = $Text } | ConvertTo-Json -Compress
        Invoke-Crc @('agent', 'emit', '--state-dir', $StateDir, 'bootstrap.failed', $body) | Out-Null
    } else {
        Say "the agent is not running, so the master sees no progress: see $Log"
    }
    Remove-Item -Force -ErrorAction SilentlyContinue $KeyFile
    exit $Code
}

function Test-Python([string]$Exe) {
    if (-not $Exe -or -not (Test-Path $Exe) -or $Exe -like '*\WindowsApps\*') { return $false }
    $saved = $ErrorActionPreference
    $ErrorActionPreference = 'Continue'
    try {
        & $Exe -I -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>&1 | Out-Null
        return ($LASTEXITCODE -eq 0)
    } catch {
        return $false
    } finally {
        $ErrorActionPreference = $saved
    }
}

function Find-Python {
    $candidates = @()
    foreach ($name in @('python.exe', 'python3.exe')) {
        $cmd = Get-Command $name -ErrorAction SilentlyContinue
        if ($cmd) { $candidates += $cmd.Source }
    }
    $candidates += @(Get-ChildItem -Path (Join-Path $env:ProgramFiles 'Python3*\python.exe') `
        -ErrorAction SilentlyContinue | Sort-Object FullName -Descending | ForEach-Object { $_.FullName })
    foreach ($exe in $candidates) {
        if (Test-Python $exe) { return $exe }
    }
    return $null
}

function Install-Python {
    $arch = if ($env:PROCESSOR_ARCHITECTURE -eq 'ARM64') { 'arm64' } else { 'amd64' }
    $url = "https://www.python.org/ftp/python/$PythonVersion/python-$PythonVersion-$arch.exe"
    $installer = Join-Path $env:TEMP "python-$PythonVersion-$arch.exe"
    Say "downloading $url"
    Invoke-WebRequest -UseBasicParsing -Uri $url -OutFile $installer
    $sig = Get-AuthenticodeSignature -FilePath $installer
    if ($sig.Status -ne 'Valid' -or $sig.SignerCertificate.Subject -notmatch 'Python Software Foundation') {
        Fail 3 "the Python installer's signature is not valid ($($sig.Status)): not running it"
    }
    $p = Start-Process -FilePath $installer -Wait -PassThru -ArgumentList @(
        '/quiet', 'InstallAllUsers=1', 'PrependPath=1', 'Include_test=0', 'Include_launcher=1')
    Remove-Item -Force -ErrorAction SilentlyContinue $installer
    if ($p.ExitCode -ne 0) { Fail 3 "the Python installer failed with exit code $($p.ExitCode)" }
    $env:Path = [Environment]::GetEnvironmentVariable('Path', 'Machine') + ';' + $env:Path
}

trap {
    Fail 1 ("step '{0}' failed: {1}" -f $Script:Step, $_.Exception.Message)
}

Say "bootstrap of machine $CrcMachine of group $CrcGroup, server $CrcUrl"
$principal = New-Object Security.Principal.WindowsPrincipal([Security.Principal.WindowsIdentity]::GetCurrent())
if (-not $principal.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
    Fail 2 'run this script as Administrator (it installs a Windows service)'
}

# -- 1. Python >= 3.10 ------------------------------------------------------------------
Step 'looking for Python >= 3.10'
$Python = Find-Python
if (-not $Python) {
    Step "installing Python $PythonVersion from python.org (all users)"
    Install-Python
    $Python = Find-Python
    if (-not $Python) { Fail 3 'Python >= 3.10 is missing and could not be installed' }
}
Report "python at $Python"

# -- 2. the agent, from the server, over the pinned connection --------------------------
Step "fetching the agent from $CrcUrl (TLS pinned to $CrcFingerprint)"
$FetchAgentPy = @'
{{FETCH_AGENT_PY}}
'@
$helper = Join-Path $env:TEMP 'crc-fetch-agent.py'
[IO.File]::WriteAllText($helper, $FetchAgentPy)
$saved = $ErrorActionPreference
$ErrorActionPreference = 'Continue'
$fetch = & $Python -I $helper --url $CrcUrl --fingerprint $CrcFingerprint --prefix $Prefix
$rc = $LASTEXITCODE
$ErrorActionPreference = $saved
Remove-Item -Force -ErrorAction SilentlyContinue $helper
if ($rc -ne 0) { Fail $rc "could not fetch the agent from $CrcUrl (see above); the key was not used" }
$FetchStatus, $AgentVersion = ("$fetch".Trim() -split '\s+')
$Record = Get-Content -Raw -Path (Join-Path $Prefix 'installed.json') | ConvertFrom-Json
$AgentPython = $Record.python
Report "agent $AgentVersion installed in $Prefix ($FetchStatus)"

# -- 3. enrollment key (only until enrolled) and service --------------------------------
$KeyArgs = @()
if (Test-Path (Join-Path $StateDir 'credential.json')) {
    Step "already enrolled (credential in $StateDir): the key is not needed"
} else {
    Step "writing the enrollment key to $KeyFile (SYSTEM and Administrators only)"
    [IO.File]::WriteAllText($KeyFile, $CrcKey)
    & icacls.exe $KeyFile /inheritance:r /grant:r '*S-1-5-18:F' '*S-1-5-32-544:F' | Out-Null
    $KeyArgs = @('--key-file', $KeyFile)
}

Step 'installing and starting the crc-agent service'
$InstallArgs = @('agent', 'install', '--url', $CrcUrl, '--state-dir', $StateDir, '--gate-ready')
if ($CrcFingerprint) { $InstallArgs += @('--fingerprint', $CrcFingerprint) }
if ($FetchStatus -eq 'changed') { $InstallArgs += '--restart' }
$rc = Invoke-Crc ($InstallArgs + $KeyArgs)
Remove-Item -Force -ErrorAction SilentlyContinue $KeyFile
if ($rc -ne 0) { Fail $rc 'could not enroll or start the agent (see above)' }
$Script:AgentUp = $true

# `crc` on the machine's PATH, for provisioning scripts (crc agent progress, ready, ...).
$Scripts = Split-Path -Parent $Record.launcher
$MachinePath = [Environment]::GetEnvironmentVariable('Path', 'Machine')
if (($MachinePath -split ';') -notcontains $Scripts) {
    [Environment]::SetEnvironmentVariable('Path', "$MachinePath;$Scripts", 'Machine')
}
$env:Path = "$env:Path;$Scripts"

foreach ($done in $Script:DoneSteps) { Report $done }
Report "crc-agent service running (machine $CrcMachine)"
{{THEN}}
# -- the end: SystemReady -----------------------------------------------------------------
$Script:Step = 'saying ready'
$rc = Invoke-Crc @('agent', 'ready', '--state-dir', $StateDir)
if ($rc -ne 0) { Fail $rc 'could not tell the agent that the machine is ready' }
Say "done: machine $CrcMachine of group $CrcGroup is ready"
exit 0
