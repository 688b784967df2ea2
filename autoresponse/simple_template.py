"""Render simple templates without jinja2's runtime, exactly as jinja2 would.

Most auto-response templates are literal text, `{{ a.b }}` on the context's plain dicts
and `{% if a.b %}`. jinja2 pays for a render context, a generator and the sandbox's
`getattr` on every one of those (~54k instructions for the shipped `new-ticket.txt`);
one generated Python expression joining the same pieces costs a fifth of that.

`compile_simple` accepts only what it can render exactly as jinja2's generated code does:
  - literal text (`TemplateData`), output unchanged;
  - a variable: a `Name` followed by `.attr` or `["key"]` steps, output as jinja2 does
    without `finalize`: `str(value)`, or `markupsafe.escape(value)` when autoescaping;
  - `{% if %}` / `{% elif %}` / `{% else %}` whose tests are such a variable or `not` one,
    taken by Python truthiness (what `if value:` in jinja2's code does).
Everything else gets None: jinja2 renders it. A render that meets anything but exact
dicts holding the keys looked up (a typo, a missing key, a string's attribute) raises
`Fallback` or KeyError, and the caller renders with jinja2, which gives the same output
or its proper error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import nodes

# What `getattr(some_dict, name)` finds; any other name on a dict is looked up as a key.
# `a.items` is the method in jinja2, so such a step is not simple.
DICT_ATTRIBUTES = frozenset(dir(dict))
# Names jinja2's code generator may bind itself instead of looking them up in the context
# (`self` at the top level, the others inside loops, macros and blocks).
_SPECIAL_NAMES = frozenset({"self", "loop", "super", "caller", "varargs", "kwargs"})

Path = tuple[str, ...]  # the context key, then each key below it


class Fallback(Exception):
    """Not an exact dict on the way to a variable: jinja2 must say what it is."""


class Branches:
    """An `{% if %}` with its `elif`s: the first true test's body, else `otherwise`."""

    __slots__ = ("otherwise", "tests")

    def __init__(self, tests: tuple[tuple[Path, bool, tuple[Op, ...]], ...],
                 otherwise: tuple[Op, ...]) -> None:
        self.tests = tests  # (variable, negated, body)
        self.otherwise = otherwise


Op = str | Path | Branches  # literal text, a variable to print, an if


class SimpleTemplate:
    """A simple template as one Python function, and whether jinja2 confirmed it yet.

    `render(context)` gives the output, or raises (Fallback, KeyError, ...) where only
    jinja2 can say what happens.
    """

    __slots__ = ("checked", "ops", "render", "source")

    def __init__(self, ops: tuple[Op, ...], autoescape: bool) -> None:
        self.ops = ops
        self.source = _python(ops, autoescape)
        namespace = {"__builtins__": {}, "type": type, "dict": dict, "str": str,
                     "_fallback": _fallback, **_escapers()}
        exec(compile(self.source, "<simple template>", "exec"), namespace)
        self.render: Callable[[dict[str, Any]], str] = namespace["render"]  # type: ignore[assignment]
        self.checked = False  # set by the caller once jinja2 rendered the same


def _fallback() -> Any:
    raise Fallback


def _python(ops: tuple[Op, ...], autoescape: bool) -> str:
    """The source of `render(c)`: one expression, as jinja2's own code would evaluate it.

    A straight line of Python costs a fraction of walking `ops` at every render. Only
    `repr()`s of the template's strings and keys go into it, never its text as code.
    """
    return ("def render(c):\n"
            "    if type(c) is not dict:\n"
            "        _fallback()\n"
            f"    return ''.join(({_parts(ops, autoescape)}))\n")


def _parts(ops: tuple[Op, ...], autoescape: bool) -> str:
    """`ops` as a tuple's items ("a, b," or "" for none)."""
    return "".join(f"{_expr(op, autoescape)}, " for op in ops)


def _expr(op: Op, autoescape: bool) -> str:
    if type(op) is str:
        return repr(op)
    if type(op) is tuple:
        if autoescape:  # markupsafe.escape(value), as a str; a plain str the quick way
            return f"(_escape_str(t) if type(t := {_lookup(op)}) is str else _escape(t))"
        return f"str({_lookup(op)})"
    assert isinstance(op, Branches)
    code = _joined(op.otherwise, autoescape)
    for path, negated, body in reversed(op.tests):
        test = f"not {_lookup(path)}" if negated else _lookup(path)
        code = f"({_joined(body, autoescape)} if {test} else {code})"
    return code


def _joined(ops: tuple[Op, ...], autoescape: bool) -> str:
    """A branch's output (a str, or a Markup that the final join turns into one)."""
    if len(ops) == 1:
        return _expr(ops[0], autoescape)
    return f"''.join(({_parts(ops, autoescape)}))" if ops else "''"


def _lookup(path: Path) -> str:
    """`c[a][b]...`, each step only on an exact dict (what the sandbox's getattr and
    getitem do there); `c` itself was checked on entry."""
    code = f"c[{path[0]!r}]"
    for key in path[1:]:
        code = f"(t if type(t := {code}) is dict else _fallback())[{key!r}]"
    return code


@functools.cache
def _escapers() -> dict[str, Callable[[Any], str]]:
    """`_escape` is markupsafe's escape; `_escape_str` the same for a plain str without
    building a Markup (about half of an HTML render's cost), if markupsafe has such a
    function and it gives exactly what escape() does."""
    import markupsafe

    inner = getattr(markupsafe, "_escape_inner", None)
    probe = "".join(map(chr, range(0x250)))
    if not callable(inner) or inner(probe) != str(markupsafe.escape(probe)):
        inner = markupsafe.escape
    return {"_escape": markupsafe.escape, "_escape_str": inner}


class _NotSimple(Exception):
    """Met a node outside the simple subset."""


def compile_simple(tree: nodes.Template, autoescape: bool) -> SimpleTemplate | None:
    """The template's simple form, or None if it uses anything beyond the simple subset.

    `tree` must be what the jinja2 template was compiled from (`env.parse` of its source).
    """
    try:
        ops = _body(tree.body)
    except _NotSimple:
        return None
    return SimpleTemplate(ops, autoescape)


def _body(body: list[nodes.Node]) -> tuple[Op, ...]:
    from jinja2 import nodes

    ops: list[Op] = []
    for node in body:
        if type(node) is nodes.Output:
            for child in node.nodes:
                if type(child) is nodes.TemplateData:
                    if not child.data:
                        continue
                    if ops and type(ops[-1]) is str:
                        ops[-1] += child.data  # type: ignore[operator]
                    else:
                        ops.append(child.data)
                else:
                    ops.append(_path(child))
        elif type(node) is nodes.If:
            tests = [_test(node)]
            for elif_ in node.elif_:
                if type(elif_) is not nodes.If or elif_.elif_ or elif_.else_:
                    raise _NotSimple
                tests.append(_test(elif_))
            ops.append(Branches(tuple(tests), _body(node.else_)))
        else:
            raise _NotSimple
    return tuple(ops)


def _test(node: nodes.If) -> tuple[Path, bool, tuple[Op, ...]]:
    from jinja2 import nodes

    test, negated = node.test, False
    if type(test) is nodes.Not:
        test, negated = test.node, True
    return _path(test), negated, _body(node.body)


def _path(node: nodes.Node) -> Path:
    from jinja2 import nodes

    if type(node) is nodes.Name and node.ctx == "load" and node.name not in _SPECIAL_NAMES:
        return (node.name,)
    if type(node) is nodes.Getattr and node.ctx == "load" \
            and node.attr not in DICT_ATTRIBUTES:
        return (*_path(node.node), node.attr)
    # `a["key"]`: the sandbox's getitem takes an existing item before any attribute.
    if type(node) is nodes.Getitem and node.ctx == "load" and type(node.arg) is nodes.Const \
            and type(node.arg.value) is str:
        return (*_path(node.node), node.arg.value)
    raise _NotSimple
