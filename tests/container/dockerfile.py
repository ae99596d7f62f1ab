"""Reading scripts/container/Dockerfile and .dockerignore as docker would, enough for tests."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
DOCKERFILE = REPOSITORY / "scripts" / "container" / "Dockerfile"
DOCKERIGNORE = REPOSITORY / ".dockerignore"
COMPUTE_TEMPLATE = REPOSITORY / "infra_templates" / "compute.yaml"


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY ...
    arguments: str  # the rest, continuation lines joined
    line: int  # where it starts (1-based)

    def exec_form(self) -> list[str]:
        """CMD ["a", "b"] -> ["a", "b"] (the JSON form; the shell form is refused)."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"line {self.line}: {self.keyword} is not in exec form"
        return value

    def flags_and_words(self) -> tuple[dict[str, str], list[str]]:
        """COPY --from=builder a b -> ({"from": "builder"}, ["a", "b"])."""
        flags, words = {}, []
        for word in shlex.split(self.arguments):
            if word.startswith("--") and not words:
                name, _, value = word[2:].partition("=")
                flags[name] = value
            else:
                words.append(word)
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [each for each in self.instructions if each.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        """ENV KEY=value ... (the key=value form), later values winning."""
        values = {}
        for each in self.all("ENV"):
            for word in shlex.split(each.arguments):
                key, sep, value = word.partition("=")
                assert sep, f"line {each.line}: use ENV KEY=value"
                values[key] = value
        return values


def instructions(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    found: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(part for part in pending if part)
        keyword, _, arguments = joined.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return found


def stages(text: str) -> list[Stage]:
    found: list[Stage] = []
    for each in instructions(text):
        if each.keyword == "FROM":
            _, words = each.flags_and_words()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            found.append(Stage(base=words[0], name=name))
        elif found:
            found[-1].instructions.append(each)
    return found


def stage_named(text: str, name: str) -> Stage:
    (stage,) = [each for each in stages(text) if each.name == name]
    return stage


# --- .dockerignore ----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax: `**` any number of folders, `*` and `?` within one."""
    out, index = "", 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        elif pattern[index] == "*":
            out, index = out + "[^/]*", index + 1
        elif pattern[index] == "?":
            out, index = out + "[^/]", index + 1
        elif pattern[index] == "[":
            end = pattern.index("]", index)
            out, index = out + pattern[index : end + 1], end + 1
        else:
            out, index = out + re.escape(pattern[index]), index + 1
    return re.compile(out)


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, pattern) in file order; the last rule that matches decides."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = pattern.strip("/") or "."
        rules.append((exception, _pattern_regex(pattern)))
    return rules


def in_context(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether a path (relative, `/`-separated) is sent to docker: a rule that matches the path
    or one of its parent folders excludes it, or takes it back with `!`."""
    parts = path.split("/")
    candidates = ["/".join(parts[: count + 1]) for count in range(len(parts))]
    included = True
    for exception, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = exception
    return included
