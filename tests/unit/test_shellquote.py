"""Template values in shell code are quoted for the place they land in
(master/scenario/shellquote.py): run for real by sh, bash and dash; PowerShell checked
with its tree-sitter grammar (no PowerShell here); cmd under Wine in
tests/windows/test_wine_quoting.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_powershell
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloudremotecontrol.master.scenario import templates
from cloudremotecontrol.master.scenario.shellquote import argv_script, dialect_for
from cloudremotecontrol.master.scenario.templates import TemplateError

HOSTILE = [
    "db$(touch PWNED)",
    "db`touch PWNED`",
    "x'; touch PWNED; echo '",
    'x"; touch PWNED; echo "',
    "x\\",
    "x\\'",
    '\\"; touch PWNED #',
    "a\nEOF\ntouch PWNED",
    "EOF",
    "$HOME ${HOME} $((1+1)) !! ~ * ? [a] {a,b}",
    "a & touch PWNED & b | c ; d > e < f",
    "-n",
    "",
    " leading and trailing ",
    "tab\there",
    "10.0.0.5$(touch PWNED)",
    "\u2019; touch PWNED; \u2018",
    "€ 日本 \u202e",
]

SH_TEMPLATES: list[tuple[str, str]] = [
    # (template with {{ vars.v }}, what it prints around the value: "<>" is the value)
    ("printf '%s|' {{ vars.v }}", "<>|"),
    ("printf '%s|' db={{ vars.v }}.lab", "db=<>.lab|"),
    ("printf '%s|' \"db={{ vars.v }}\"", "db=<>|"),
    ("printf '%s|' 'db={{ vars.v }}'", "db=<>|"),
    ("printf '%s|' \"$(printf '%s.' {{ vars.v }})\"", "<>.|"),
    ("printf '%s|' \"a$(printf '%s.' \"in {{ vars.v }}\")b\"", "ain <>.b|"),
    ("cat <<EOF\nv={{ vars.v }}|\nEOF", "v=<>|\n"),
    ("cat <<-EOF\n\tv={{ vars.v }}|\n\tEOF", "v=<>|\n"),
    ("cat <<'EOF'\nv={{ vars.v }}|\nEOF", "v=<>|\n"),
    ("printf ok # {{ vars.v }}", "ok"),
]


def _shells() -> list[str]:
    return [s for s in ("sh", "bash", "dash") if shutil.which(s)]


def _run_sh(shell: str, script: str, cwd: Path) -> str:
    out = subprocess.run(
        [shell, "-c", script], cwd=cwd, capture_output=True, timeout=30, check=False
    )
    assert out.returncode == 0, (script, out.stderr)
    return out.stdout.decode("utf-8", "surrogateescape")


def _render(template: str, value: str, dialect: str) -> str:
    return templates.render(template, {"vars": {"v": value}}, dialect)


def _carriable(template: str, value: str) -> bool:
    """Whether a context can carry ``value`` at all (else a TemplateError is right)."""
    if "#" in template and any(c in value for c in "\r\n\x0b\x0c\x85\u2028\u2029"):
        return False
    if "<<" in template:
        return not any(
            line.lstrip("\t") == "EOF" for line in f"v={value}|".split("\n")
        ) and "EOF" not in value.split("\n")
    return True


@pytest.mark.parametrize("shell", _shells())
def test_hostile_values_are_printed_never_run_by_sh(shell: str, tmp_path: Path) -> None:
    for template, shape in SH_TEMPLATES:
        for value in HOSTILE:
            try:
                script = _render(template, value, "sh")
            except TemplateError:
                assert not _carriable(template, value), (template, value)
                continue
            got = _run_sh(shell, script, tmp_path)
            assert got == shape.replace("<>", value), (template, value, script, got)
    assert list(tmp_path.iterdir()) == []  # no PWNED: nothing ran


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(_TEXT, st.sampled_from(HOSTILE)), which=st.integers(0, 9))
def test_any_value_is_one_piece_of_text_for_sh(
    value: str, which: int, tmp_path_factory: Any
) -> None:
    cwd = tmp_path_factory.mktemp("sh")
    template, shape = SH_TEMPLATES[which]
    try:
        script = _render(template, value, "sh")
    except TemplateError:
        assert not _carriable(template, value), (template, value)
        return
    # Line breaks inside the value stay; the shell keeps every other character as is.
    assert _run_sh("sh", script, cwd) == shape.replace("<>", value), (template, value, script)
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    "template",
    [
        "echo `echo {{ vars.v }}`",
        "echo ${HOME:-{{ vars.v }}}",
        "echo $(( {{ vars.v }} + 1 ))",
        "echo $'{{ vars.v }}'",
        "echo \\{{ vars.v }}",
        'echo "\\{{ vars.v }}"',
        "echo ${{ vars.v }}",
        "cat <<{{ vars.v }}\nx\n",
    ],
)
def test_placements_that_cannot_be_quoted_are_refused_when_the_file_is_loaded(
    template: str,
) -> None:
    problems = templates.check(template, {"v": 1}, set(), "sh")
    assert len(problems) == 1 and "{{ vars.v }}" in problems[0] and "raw" in problems[0]
    # ...and | raw is the author's explicit way out.
    assert templates.check(template.replace("vars.v", "vars.v | raw"), {"v": 1}, set(), "sh") == []


def test_raw_inserts_the_value_as_is_and_quote_does_not_quote_twice() -> None:
    ctx = {"vars": {"flags": "-la --color", "v": "a b"}}
    assert templates.render("ls {{ vars.flags | raw }}", ctx, "sh") == "ls -la --color"
    assert templates.render("echo {{ vars.v | quote }}", ctx, "sh") == "echo 'a b'"
    assert templates.render('echo "{{ vars.v | json }}"', ctx, "sh") == 'echo "\\"a b\\""'
    # Outside shell code nothing changes: push content, env, send bodies...
    assert templates.render("x={{ vars.v }}", ctx) == "x=a b"
    assert templates.render("x={{ vars.v | quote }}", ctx) == "x='a b'"


# -- PowerShell ---------------------------------------------------------------------------

PS_TEMPLATES = [
    'Set-Content C:\\build\\peers.txt "db={{ vars.v }}"',
    "Write-Output {{ vars.v }}",
    "$x = {{ vars.v }}; Write-Output $x",
    "Write-Output 'db={{ vars.v }}'",
    'Write-Output "a $(Write-Output {{ vars.v }}) b"',
    '$t = @"\nv={{ vars.v }}\n"@\nWrite-Output $t',
    "$t = @'\nv={{ vars.v }}\n'@\nWrite-Output $t",
    "Write-Output ok # {{ vars.v }}",
    "<# {{ vars.v }} #> Write-Output ok",
]
PS_HOSTILE = [
    *HOSTILE,
    "$(New-Item PWNED)",
    "`$(x)",
    "'; New-Item PWNED; '",
    '"; New-Item PWNED; "',
    "\u2018; New-Item PWNED; \u2019",
    "\u201c; New-Item PWNED; \u201d",
    "\u201e$(New-Item PWNED)",
    "@(New-Item PWNED)",
    "x`",
    '\n"@\nNew-Item PWNED\n@"\n',
    "\n'@\nNew-Item PWNED\n@'\n",
    "#> New-Item PWNED <#",
]

_PS = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
_STRINGS = {
    "expandable_string_literal",
    "verbatim_string_characters",
    "expandable_here_string_literal",
    "verbatim_here_string_characters",
    "comment",
}


def _ps_value_nodes(source: str, start: int, end: int) -> tuple[list[str], set[str]]:
    """Parse ``source``; the ERROR nodes, and the types of the innermost nodes that hold
    the byte range [start, end) of the value."""
    tree = _PS.parse(source.encode())
    errors: list[str] = []
    inner: set[str] = set()

    def walk(n: Any) -> None:
        if n.type == "ERROR" or n.is_missing:
            errors.append(source.encode()[n.start_byte : n.end_byte].decode(errors="replace"))
        if n.start_byte <= start and end <= n.end_byte and n.type in _STRINGS:
            inner.add(n.type)
        for c in n.children:
            # Anything executable that begins inside the value's bytes is an injection.
            if c.type in ("sub_expression", "command", "variable", "script_block") and (
                start <= c.start_byte < end
            ):
                inner.add("INJECTED:" + c.type)
            walk(c)

    walk(tree.root_node)
    return errors, inner


@pytest.mark.parametrize("template", PS_TEMPLATES)
def test_hostile_values_stay_inside_one_powershell_string_or_comment(template: str) -> None:
    for value in PS_HOSTILE:
        marker = "\ue000"  # where the value goes, to find it in the output
        try:
            rendered = _render(template, value, "powershell")
        except TemplateError as exc:
            assert "comment" in str(exc) or "here-document" in str(exc), (template, value, exc)
            continue
        plain = templates.render(template, {"vars": {"v": marker}}, "powershell")
        prefix, _, suffix = plain.partition(marker)
        prefix = prefix.rstrip("'")  # the quote that wraps a bare word is the string's own
        assert rendered.startswith(prefix)
        start = len(prefix.encode())
        end = len(rendered.encode()) - len(suffix.lstrip("'").encode())
        errors, inner = _ps_value_nodes(rendered, start, end)
        assert not errors, (template, value, rendered, errors)
        assert inner and not any(t.startswith("INJECTED") for t in inner), (
            template,
            value,
            rendered,
            inner,
        )


@pytest.mark.parametrize(
    "template",
    [
        "Write-Output `{{ vars.v }}",
        'Write-Output "`{{ vars.v }}"',
        'Write-Output "${{ vars.v }}"',
        "Write-Output ${a{{ vars.v }}}",
        "cmd /c --% echo {{ vars.v }}",
        "Write-Output db={{ vars.v }}",
        "Write-Output {{ vars.v }}.txt",
    ],
)
def test_powershell_placements_that_cannot_be_quoted_are_refused(template: str) -> None:
    problems = templates.check(template, {"v": 1}, set(), "powershell")
    assert len(problems) == 1 and "raw" in problems[0], problems


# -- which shell ---------------------------------------------------------------------------


def test_the_dialect_is_the_steps_shell_or_its_machines_default() -> None:
    assert dialect_for("bash", ["windows"]) == "sh"
    assert dialect_for("powershell", ["linux"]) == "powershell"
    assert dialect_for(None, ["linux", "linux"]) == "sh"
    assert dialect_for(None, ["windows"]) == "cmd"
    assert dialect_for(None, ["linux", "windows"]) is None
    assert argv_script(["sh", "-c", "echo {{ x }}"]) == (2, "sh")
    assert argv_script(["/bin/bash", "-euc", "x", "arg0"]) == (2, "sh")
    assert argv_script(["pwsh", "-NoProfile", "-Command", "x"]) == (3, "powershell")
    assert argv_script(["echo", "-c", "x"]) is None
    assert argv_script(["sh", "script.sh"]) is None


def test_the_powershell_check_sees_an_injection_when_a_value_is_not_quoted() -> None:
    # The same value inserted raw: the parse shows the command it would run.
    for template, value in [
        ('Write-Output "db={{ vars.v | raw }}"', "x$(New-Item PWNED)"),
        ("Write-Output {{ vars.v | raw }}", "x; New-Item PWNED"),
        ("Write-Output '{{ vars.v | raw }}'", "x'; New-Item PWNED; '"),
    ]:
        rendered = _render(template, value, "powershell")
        start = rendered.index(value[0], len("Write-Output "))
        _, inner = _ps_value_nodes(rendered, start, start + len(value.encode()))
        assert any(t.startswith("INJECTED") for t in inner), (rendered, inner)


# -- cmd (run for real under Wine: tests/windows/test_wine_quoting.py) ------------------

CMD_PROGRAM = r"C:\Python312\python.exe C:\args.py"


@pytest.mark.parametrize("value", ["50%", "%PATH%", "line\nbreak", "cr\rhere"])
def test_values_cmd_cannot_carry_are_refused_not_mangled(value: str) -> None:
    for template in (CMD_PROGRAM + " {{ vars.v }}", CMD_PROGRAM + ' "{{ vars.v }}"'):
        with pytest.raises(TemplateError):
            _render(template, value, "cmd")


@pytest.mark.parametrize(
    "template", ["echo ^{{ vars.v }}", "echo %{{ vars.v }}%", 'echo "%{{ vars.v }}"']
)
def test_cmd_placements_that_cannot_be_quoted_are_refused(template: str) -> None:
    problems = templates.check(template, {"v": 1}, set(), "cmd")
    assert len(problems) == 1 and "raw" in problems[0], problems


def test_cmd_values_are_double_quoted_with_quotes_doubled() -> None:
    assert _render("x {{ vars.v }}", 'a "b" & c', "cmd") == 'x "a ""b"" & c"'
    assert _render('x "db={{ vars.v }}"', "a & b", "cmd") == 'x "db=a & b"'
    assert _render("x {{ vars.v }}", "end\\", "cmd") == 'x "end\\\\"'
