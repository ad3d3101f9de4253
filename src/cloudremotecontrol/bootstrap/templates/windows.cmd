@echo off
rem CloudRemoteControl bootstrap for machine {{MACHINE_TEXT}} of group {{GROUP_TEXT}} (crc {{VERSION}}).
rem Run once as Administrator (a Vultr startup script for Windows); running it again
rem changes nothing. cmd finds Python >= 3.10 (and only when there is none, installs it
rem from python.org with PowerShell), then Python runs the part of this file below the
rem marker line CRC-PYTHON-BELOW: it fetches the agent from the server over TLS pinned to the
rem fingerprint (before the key is used at all), checks its SHA-256, enrolls with the
rem single-use key and registers the crc-agent Windows service (LocalSystem, automatic
rem start, restart on failure). Log: %ProgramData%\CloudRemoteControl\bootstrap.log
setlocal EnableExtensions DisableDelayedExpansion
set "CRC_BOOTSTRAP_SELF=%~f0"
set "CRC_PYTHON_VERSION={{PYTHON_VERSION}}"
set "CRC_PY="
if defined CRC_PYTHON call :try_python "%CRC_PYTHON%"
if not defined CRC_PY call :find_python
if defined CRC_PY goto have_python
echo crc-bootstrap: no Python 3.10 or later found: installing Python %CRC_PYTHON_VERSION% from python.org with PowerShell 1>&2
powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command "$t = [IO.File]::ReadAllText($env:CRC_BOOTSTRAP_SELF); $a = $t.IndexOf('#' + 'CRC-INSTALL-PYTHON'); $b = $t.IndexOf('#' + 'CRC-PYTHON-BELOW'); if ($a -lt 0 -or $b -lt $a) { exit 90 }; & ([ScriptBlock]::Create($t.Substring($a, $b - $a))); exit $LASTEXITCODE"
if errorlevel 1 goto no_python
call :find_python
if not defined CRC_PY goto no_python
:have_python
echo crc-bootstrap: python at %CRC_PY% 1>&2
"%CRC_PY%" -I -c "import sys; p = sys.argv[1]; t = open(p, encoding='utf-8').read(); i = t.index('#' + 'CRC-PYTHON-BELOW'); j = t.index('#' + 'CRC-FETCH-AGENT-PY', i); exec(compile(t[i:j], p, 'exec'), {'__name__': '__main__', '__file__': p})" "%CRC_BOOTSTRAP_SELF%"
exit /b %ERRORLEVEL%

:no_python
echo crc-bootstrap: error: Python 3.10 or later is missing and could not be installed (set CRC_PYTHON to a python.exe to use) 1>&2
exit /b 3

rem A usable Python: 3.10 or later, not the Microsoft Store stub (WindowsApps); the
rem newest of python.org's default places. (No conditional operators and no wildcards in
rem "for": plain constructs that Wine's cmd runs as Windows does.)
:find_python
for %%P in (python.exe python3.exe) do if not defined CRC_PY call :try_python "%%~$PATH:P"
for %%V in (314 313 312 311 310) do if not defined CRC_PY call :try_python "%ProgramFiles%\Python%%V\python.exe"
for %%V in (314 313 312 311 310) do if not defined CRC_PY call :try_python "%SystemDrive%\Python%%V\python.exe"
for %%V in (314 313 312 311 310) do if not defined CRC_PY call :try_python "%LocalAppData%\Programs\Python\Python%%V\python.exe"
exit /b 0

:try_python
set "CRC_CAND=%~1"
if not defined CRC_CAND exit /b 1
if not "%CRC_CAND:\WindowsApps\=%"=="%CRC_CAND%" exit /b 1
if not exist "%CRC_CAND%" exit /b 1
"%CRC_CAND%" -I -c "import sys; sys.exit(sys.version_info < (3, 10))" >nul 2>nul
if errorlevel 1 exit /b 1
set "CRC_PY=%CRC_CAND%"
exit /b 0

#CRC-INSTALL-PYTHON: PowerShell, run by the lines above only when there is no Python.
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'  # Invoke-WebRequest is far slower with it
[Net.ServicePointManager]::SecurityProtocol = [Net.SecurityProtocolType]::Tls12
$PythonVersion = $env:CRC_PYTHON_VERSION
$arch = if ($env:PROCESSOR_ARCHITECTURE -eq 'ARM64') { 'arm64' } else { 'amd64' }
$url = "https://www.python.org/ftp/python/$PythonVersion/python-$PythonVersion-$arch.exe"
$installer = Join-Path $env:TEMP "python-$PythonVersion-$arch.exe"
[Console]::Error.WriteLine("crc-bootstrap: downloading $url")
try {
    Invoke-WebRequest -UseBasicParsing -Uri $url -OutFile $installer
    $sig = Get-AuthenticodeSignature -FilePath $installer
    if ($sig.Status -ne 'Valid' -or $sig.SignerCertificate.Subject -notmatch 'Python Software Foundation') {
        [Console]::Error.WriteLine("crc-bootstrap: error: the Python installer's signature is not valid ($($sig.Status)): not running it")
        exit 3
    }
    $p = Start-Process -FilePath $installer -Wait -PassThru -ArgumentList @(
        '/quiet', 'InstallAllUsers=1', 'PrependPath=1', 'Include_test=0', 'Include_launcher=1')
    if ($p.ExitCode -ne 0) {
        [Console]::Error.WriteLine("crc-bootstrap: error: the Python installer failed with exit code $($p.ExitCode)")
        exit 3
    }
} catch {
    [Console]::Error.WriteLine("crc-bootstrap: error: installing Python failed: $($_.Exception.Message)")
    exit 3
} finally {
    Remove-Item -Force -ErrorAction SilentlyContinue $installer
}
exit 0
