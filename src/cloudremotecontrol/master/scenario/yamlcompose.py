"""Composing a scenario's text into PyYAML nodes: with libyaml where it agrees, else as before.

Why: PyYAML's pure-Python composer reads a few hundred thousand values in tens of
seconds. A 3.5 MB scenario with a large ``variables:`` block took 11 s to compose on a
quiet machine and over 20 s on a busy one, before ``crc up`` did anything. libyaml (PyYAML's
``CSafeLoader``, in its wheels) composes the same file in under a second.

Why not simply libyaml: the two are not the same parser. PyYAML's scanner and parser are
ports of libyaml's, but they part ways at the edges. The yaml-test-suite, and the
differential test next to the unit tests (tests/unit/test_scenario_yaml_compose.py),
show these cases:

* libyaml takes tabs that PyYAML refuses (``a: b<TAB>``, ``key:<TAB>|``), and a byte
  order mark inside the text moves its columns;
* it takes ``?`` inside a plain value in flow style (``[a?b]``), and ``|#`` (a
  block scalar header followed by a comment without a space), which PyYAML refuses;
* it gives ``!`` alone (the non-specific tag) another tag, and takes a tag on an empty
  value in flow style (``{a: !!str, b}``);
* it places an empty value in flow style (``{a: }``) at the next token, not after the
  ``:``, and moves the end of the text to a new line;
* it reads directives (``%YAML``, ``%FOO``) differently;
* it nests deeper than PyYAML's recursive composer goes.

A scenario's problems name the line and column of a node, and a file PyYAML refused must
still be refused with PyYAML's message. So libyaml's tree is used only when none of the
above can be in it. The checks are on the text (no tab, no byte order mark, no line
starting with ``%``, a line break at the end), then on the tree libyaml made (every tag
is the one PyYAML's resolver gives that value; no empty or ``?``-holding plain value in
flow style; every block scalar header is followed by a blank; nesting at most
``MAX_FAST_DEPTH``). If libyaml refuses the text, or one check fails, the pure loader
reads the text again, and its tree or its error is the result, as before. Being wrong
here is cheap: the pure loader reads the text again, and only time is lost.

The pure loader is also used when PyYAML was built without libyaml. Scenarios are read
by the master CLI only; the agent never imports this module.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

__all__ = ["MAX_FAST_DEPTH", "compose", "gc_paused", "is_plain", "libyaml_loader"]

# Nesting libyaml may compose for us: PyYAML's composer recurses twice per level and
# meets a RecursionError near 500 levels; libyaml goes to 1000.
MAX_FAST_DEPTH = 100

_STR = "tag:yaml.org,2002:str"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
# Both break lines at \n, \r, NEL, LS and PS.
_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")
# Text libyaml reads otherwise: a tab, a byte order mark, a directive line.
_APART = ("\t", "\ufeff", *(b + "%" for b in _BREAKS))
# A block scalar from the node's start: its anchor and tag, if any, then | or > and the
# chomping and indentation indicators, which PyYAML wants followed by a blank.
_HEADER = re.compile(r"(?:[&!][^ \n]* +)*[|>][-+0-9]*")


def is_plain(node: yaml.Node) -> bool:
    """Whether ``node`` is a plain (unquoted, not block) scalar, as either composer
    marks it: PyYAML's pure composer gives it the style None, libyaml's the style ""."""
    return isinstance(node, yaml.ScalarNode) and node.style in (None, "")


def libyaml_loader() -> type[Any] | None:
    """PyYAML's libyaml loader class, or None if PyYAML was built without libyaml."""
    return getattr(yaml, "CSafeLoader", None)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: while a tree of hundreds of thousands of
    nodes grows, each collection walks all of it again (half of the time of a large
    file). What is made inside is kept or freed by reference counts; a cycle
    (``&x [*x]``) waits for the first collection after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def compose(text: str, loader: yaml.SafeLoader) -> yaml.Node | None:
    """The node tree of the single document of ``text`` as ``loader`` (PyYAML's pure
    ``SafeLoader``, made on ``text``) composes it: the same kinds, tags, values, start
    marks and shared (aliased) nodes. Raises what ``loader.get_single_node()`` raises."""
    node = _libyaml_tree(text, loader)
    return node if node is not None else loader.get_single_node()


def _libyaml_tree(text: str, resolver: yaml.SafeLoader) -> yaml.Node | None:
    """libyaml's tree of ``text`` if it is the pure loader's; None if not known to be."""
    fast = libyaml_loader()
    if fast is None or not text.endswith(_BREAKS) or any(s in text for s in _APART):
        return None
    if text.startswith("%"):
        return None
    try:
        loader = fast(text)
        try:
            root: yaml.Node | None = loader.get_single_node()
        finally:
            loader.dispose()
    except (yaml.YAMLError, ValueError, RecursionError):
        return None  # the pure loader says what is wrong, in its words
    if root is None or not _agrees(root, text, resolver):
        return None
    return root


def _agrees(root: yaml.Node, text: str, resolver: yaml.SafeLoader) -> bool:
    """Whether libyaml's tree ``root`` of ``text`` is free of the constructs on which
    libyaml and the pure loader part (the module docstring lists them)."""
    seen: set[int] = set()
    # In document order, so that a node shared by aliases is first met where its
    # anchor defines it, at the depth PyYAML's composer recurses to.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, in_flow = stack.pop()
        if id(node) in seen:
            continue  # an alias: checked where its anchor is
        seen.add(id(node))
        if depth > MAX_FAST_DEPTH:
            return False
        # Only a node with an anchor or a tag starts with & or !; every other one has
        # the tag the resolver (PyYAML's, for both) gave it.
        if text.startswith(("&", "!"), node.start_mark.index) and not _implicit(node, resolver):
            return False
        if isinstance(node, yaml.ScalarNode):
            if is_plain(node):
                if in_flow and (not node.value or "?" in node.value):
                    return False
            elif node.style in ("|", ">"):
                header = _HEADER.match(text, node.start_mark.index)
                if header is None or not text.startswith((" ", *_BREAKS), header.end()):
                    return False
        elif isinstance(node, yaml.SequenceNode):
            flow = in_flow or bool(node.flow_style)
            stack.extend((child, depth + 1, flow) for child in reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            flow = in_flow or bool(node.flow_style)
            for key, value in reversed(node.value):
                stack.append((value, depth + 1, flow))
                stack.append((key, depth + 1, flow))
    return True


def _implicit(node: yaml.Node, resolver: yaml.SafeLoader) -> bool:
    """Whether ``node`` has the tag it would have without one written."""
    if isinstance(node, yaml.ScalarNode):
        if is_plain(node):
            # The stubs leave resolve untyped; it returns the tag, a str.
            tag = resolver.resolve(yaml.ScalarNode, node.value, (True, False))  # type: ignore[no-untyped-call]
            return bool(node.tag == tag)
        return bool(node.tag == _STR)
    return bool(node.tag == (_SEQ if isinstance(node, yaml.SequenceNode) else _MAP))
