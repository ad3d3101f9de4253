@echo off
rem CloudRemoteControl bootstrap for machine {{MACHINE_TEXT}} of group {{GROUP_TEXT}} (crc {{VERSION}}).
rem Run once as Administrator (a Vultr startup script for Windows). This wrapper hands
rem everything after the marker line to Windows PowerShell; cmd never reads past "exit".
setlocal
set "CRC_BOOTSTRAP_SELF=%~f0"
powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -Command "$t = [IO.File]::ReadAllText($env:CRC_BOOTSTRAP_SELF); $m = '#' + 'CRC-POWERSHELL-BELOW'; $i = $t.IndexOf($m); if ($i -lt 0) { exit 90 }; & ([ScriptBlock]::Create($t.Substring($i))); exit $LASTEXITCODE"
exit /b %ERRORLEVEL%
#CRC-POWERSHELL-BELOW
