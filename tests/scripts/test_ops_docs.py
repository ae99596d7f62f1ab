"""The operations pages stay true to the code: every message docs/troubleshooting.md quotes is
one the code raises, and every kind of user-facing error has an entry there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.scripts.error_messages import PACKAGES, REPO, MessageTemplate, all_templates

DOCS = REPO / "docs"
# A quoted message is a block quote holding only a code span: > `message` (or > ``message``
# when the message itself holds backticks).
QUOTE = re.compile(r"^> (`+)(.+?)\1\s*$")
# Errors a user never reads, with the reason: they are not covered by the page.
EXEMPT = {
    "LeaseLostError": "the worker's own signal that another worker took its job over; the "
    "user sees the job's state, never this message",
    "JobCancelledError": "the worker's own signal to stop a cancelled job; the user sees "
    "the job cancelled",
    ("MrictlError", "INTERNAL"): "a guard against a programming error (exit 1 is a bug: the "
    "page's last section covers bugs)",
}


def quoted_messages(page: Path) -> list[str]:
    messages = []
    for line in page.read_text(encoding="utf-8").splitlines():
        match = QUOTE.match(line)
        if match:
            messages.append(match.group(2).strip())
    return messages


def user_facing_classes() -> set[str]:
    """Every exception class in the packages that descends from MrictlError or RakiError."""
    bases: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    names = [
                        b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                        for b in node.bases
                    ]
                    bases[node.name] = names
    found = {"MrictlError", "RakiError"}
    while True:
        more = {name for name, parents in bases.items() if set(parents) & found} - found
        if not more:
            return found
        found |= more


def coverage_key(template: MessageTemplate) -> str | tuple[str, str]:
    """MrictlError is raised with every exit code: each code is a kind of its own."""
    if template.error_class == "MrictlError":
        return ("MrictlError", template.exit_code or "BAD_INPUT")
    return template.error_class


@pytest.fixture(scope="module")
def templates() -> list[MessageTemplate]:
    return all_templates()


def test_every_quoted_message_is_one_the_code_raises(templates):
    quoted = quoted_messages(DOCS / "troubleshooting.md")
    assert len(quoted) > 40
    unknown = [q for q in quoted if not any(t.matches(q) for t in templates)]
    assert not unknown, "quoted in troubleshooting.md but raised nowhere:\n" + "\n".join(unknown)


def test_every_kind_of_user_facing_error_has_an_entry(templates):
    classes = user_facing_classes()
    quoted = quoted_messages(DOCS / "troubleshooting.md")
    raised = {coverage_key(t) for t in templates if t.error_class in classes}
    covered = {coverage_key(t) for t in templates for q in quoted if t.matches(q)}
    missing = sorted(map(str, raised - covered - set(EXEMPT)))
    assert not missing, "no entry in troubleshooting.md for: " + ", ".join(missing)
    stale = sorted(map(str, set(EXEMPT) - raised))
    assert not stale, "exempt but no longer raised: " + ", ".join(stale)


def test_the_page_cannot_pass_by_matching_anything(templates):
    """A template that is mostly placeholders would match any quote: the check needs text."""
    made_up = "the scanner exploded: call the vendor"
    assert not any(t.matches(made_up) for t in templates)
    assert any(t.matches("scan.h5: no such file") for t in templates)
    assert any(
        t.matches("job-0123456789abcdef is running: only failed or cancelled jobs retry")
        for t in templates
    )
