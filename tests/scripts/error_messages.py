"""The user-facing error messages the code really raises, read from its source as templates.

docs/troubleshooting.md quotes these messages; its test matches every quote against a template
here (an f-string's placeholders, and anything not written out in the source, are wildcards),
so the page cannot drift from what `mrictl` says.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("mrictl", "raki")
WILDCARD = "\x00"  # stands for a placeholder while a template is being built
# Errors whose message is "<file name>: <reason>" (raki.errors.FileFormatError and subclasses).
FILE_ERRORS = {"FileFormatError", "MissingFileError", "NotAFileError"}
DEFAULT_FILE_REASON = {"MissingFileError": "no such file"}
# Too little written out to say anything (e.g. `raise MrictlError(str(error))`).
LEAST_LITERAL_CHARACTERS = 8


@dataclass(frozen=True)
class MessageTemplate:
    error_class: str
    exit_code: str | None  # the ExitCode name given at the raise site, if any
    text: str  # the message with WILDCARD where the code fills something in
    where: str  # path:line

    @property
    def literal_characters(self) -> int:
        return len(self.text.replace(WILDCARD, "").strip(" :;,.()"))

    def pattern(self) -> re.Pattern[str]:
        parts = [re.escape(re.sub(r"\s+", " ", part)) for part in self.text.split(WILDCARD)]
        return re.compile("(?s)" + ".+".join(parts))

    def matches(self, quoted: str) -> bool:
        return bool(self.pattern().fullmatch(re.sub(r"\s+", " ", quoted.strip())))


def _called_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


# A module's functions that return text: name -> (returned expressions, their assignments).
Functions = dict[str, tuple[list[ast.expr], dict[str, list[ast.expr]]]]


def _text(
    node: ast.expr | None,
    assigned: dict[str, list[ast.expr]],
    depth: int = 0,
    functions: Functions | None = None,
) -> list[str]:
    """Every text the expression can evaluate to, WILDCARD for what the source leaves open;
    a call of a function of the same module stands for every text that function returns."""
    if node is None or depth > 4:
        return [WILDCARD]
    functions = functions or {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
        returned, inner = functions[node.func.id]
        texts = [t for value in returned for t in _text(value, inner, depth + 1, functions)]
        return texts or [WILDCARD]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        pieces = [""]
        for value in node.values:
            if isinstance(value, ast.Constant):
                pieces = [piece + str(value.value) for piece in pieces]
            elif (
                isinstance(value, ast.FormattedValue)
                and isinstance(value.value, ast.Name)
                and value.value.id in assigned
                and value.format_spec is None
            ):  # a message built in steps: `{when}` is one of the texts `when` was given
                # (or, as any placeholder, whatever the page calls it)
                options = [WILDCARD, *_text(value.value, assigned, depth + 1, functions)]
                pieces = [piece + option for piece in pieces for option in options]
            else:
                pieces = [piece + WILDCARD for piece in pieces]
        return pieces
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [
            left + right
            for left in _text(node.left, assigned, depth + 1, functions)
            for right in _text(node.right, assigned, depth + 1, functions)
        ]
    if isinstance(node, ast.IfExp):
        return _text(node.body, assigned, depth + 1, functions) + _text(
            node.orelse, assigned, depth + 1, functions
        )
    if isinstance(node, ast.Name) and node.id in assigned:
        values = assigned[node.id]
        return [t for value in values for t in _text(value, assigned, depth + 1, functions)]
    return [WILDCARD]


def _exit_code_name(call: ast.Call) -> str | None:
    candidates = list(call.args[1:]) + [kw.value for kw in call.keywords if kw.arg == "exit_code"]
    for candidate in candidates:
        if isinstance(candidate, ast.Attribute) and _called_name(candidate.value) == "ExitCode":
            return candidate.attr
    return None


def _assignments(function: ast.AST) -> dict[str, list[ast.expr]]:
    """Names assigned in a function (every assignment: the raise may follow any of them)."""
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append(node.value)
        elif (
            isinstance(node, ast.AnnAssign | ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.value is not None
        ):
            found.setdefault(node.target.id, []).append(node.value)
    return found


def _built_by_init(tree: ast.Module, path: Path) -> list[MessageTemplate]:
    """Errors that compose their own message in `__init__` (e.g. ObjectArchivedError from a key
    and a storage class): the message is what `super().__init__` receives, unless that is just
    a parameter handed on (then the raise sites say it, read below)."""
    found = []
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not cls.name.endswith("Error") or cls.name in FILE_ERRORS:
            continue
        for init in cls.body:
            if not (isinstance(init, ast.FunctionDef) and init.name == "__init__"):
                continue
            parameters = {arg.arg for arg in init.args.args + init.args.kwonlyargs}
            for call in (n for n in ast.walk(init) if isinstance(n, ast.Call)):
                func = call.func
                is_super = isinstance(func, ast.Attribute) and func.attr == "__init__"
                if not (is_super and call.args):
                    continue
                first = call.args[0]
                if isinstance(first, ast.Name) and first.id in parameters:
                    continue
                where = f"{path.relative_to(REPO).as_posix()}:{call.lineno}"
                for text in _text(first, _assignments(init)):
                    found.append(MessageTemplate(cls.name, None, text, where))
    return found


def templates_in(path: Path) -> list[MessageTemplate]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]
    owner: dict[int, dict[str, list[ast.expr]]] = {}
    for scope in scopes:  # innermost function wins: functions come after the module
        names = _assignments(scope)
        for node in ast.walk(scope):
            owner[id(node)] = names
    functions: Functions = {}
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        returned = [
            n.value for n in ast.walk(function) if isinstance(n, ast.Return) and n.value is not None
        ]
        if any(isinstance(value, ast.JoinedStr | ast.Constant | ast.BinOp) for value in returned):
            functions[function.name] = (returned, _assignments(function))
    found = _built_by_init(tree, path)
    for node in ast.walk(tree):
        # `raise XError(...)`, and `return XError(...)` of the functions that build an error
        # for their callers to raise (mrictl.backends.aws.errors.aws_error).
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            call = node.exc
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Call):
            call = node.value
        else:
            continue
        name = _called_name(call.func)
        if not name or not name.endswith("Error"):
            continue
        assigned = owner.get(id(node), {})
        if name in FILE_ERRORS:
            reason_node = call.args[1] if len(call.args) > 1 else None
            reason_node = next((k.value for k in call.keywords if k.arg == "reason"), reason_node)
            if reason_node is None and name in DEFAULT_FILE_REASON:
                reasons = [DEFAULT_FILE_REASON[name]]
            else:
                reasons = _text(reason_node, assigned, 0, functions)
            texts = [f"{WILDCARD}: {reason}" for reason in reasons]
        else:
            first = call.args[0] if call.args else None
            first = next((k.value for k in call.keywords if k.arg == "message"), first)
            texts = _text(first, assigned, 0, functions)
        where = f"{path.relative_to(REPO).as_posix()}:{node.lineno}"
        for text in texts:
            found.append(MessageTemplate(name, _exit_code_name(call), text, where))
    return found


def all_templates() -> list[MessageTemplate]:
    """Every raise of an `...Error` in mrictl/ and raki/ with enough text to recognise."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found += templates_in(path)
    return [t for t in found if t.literal_characters >= LEAST_LITERAL_CHARACTERS]
