"""The operations pages stay true to the code: every message docs/troubleshooting.md quotes is
one the code raises, and every kind of user-facing error has an entry there."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
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


# An environment variable the code reads: MRICTL_ then capitals, not inside a longer name
# and not a prefix (`MRICTL_AWS_*`, f"MRICTL_AWS_{name}").
VARIABLE = re.compile(r"(?<![A-Za-z0-9_])MRICTL_[A-Z0-9_]*[A-Z0-9](?![A-Za-z0-9_])")


def variables_in_code() -> set[str]:
    found = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found |= set(VARIABLE.findall(path.read_text(encoding="utf-8")))
    # A bare prefix (MRICTL_AWS, used to build names) is not a variable of its own.
    return {name for name in found if not any(o.startswith(name + "_") for o in found)}


def test_every_environment_variable_the_code_reads_is_documented():
    page = (DOCS / "it-automation.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(_?MRICTL_[A-Z0-9_]+)`", page))
    missing = sorted(variables_in_code() - documented)
    assert not missing, "not in docs/it-automation.md: " + ", ".join(missing)
    assert {"MRICTL_HOME", "MRICTL_BACKEND", "MRICTL_CONFIG"} <= documented


def test_every_config_key_is_documented():
    from mrictl.config import SAVED_BY_COMMANDS, SECTIONS, TOP_LEVEL

    keys = set(TOP_LEVEL)
    for section, kind in SECTIONS.items():
        saved = SAVED_BY_COMMANDS.get(section, set())
        keys |= {f"{section}.{f.name}" for f in fields(kind) if f.name not in saved}
    page = (DOCS / "it-automation.md").read_text(encoding="utf-8")
    table = set(re.findall(r"`([a-z_]+(?:\.[a-z_]+)?)`", page))
    missing = sorted(keys - table)
    assert not missing, "config keys not in docs/it-automation.md: " + ", ".join(missing)


def test_the_json_examples_are_generated_and_cover_the_job_commands():
    page = (DOCS / "it-automation.md").read_text(encoding="utf-8")
    generated = page.split("<!-- BEGIN generated by scripts/ops/gen_json_examples.py -->")[1]
    shown = re.findall(r"^`mrictl ([^`]+)`", generated, re.MULTILINE)
    for command in (
        "scan info",
        "recon run",
        "upload",
        "recon submit",
        "recon status",
        "recon logs",
        "recon retry",
        "recon cancel",
        "fetch",
        "worker run",
        "train",
    ):
        assert any(line.startswith(command + " ") for line in shown), command
    assert "/tmp/" not in generated and str(REPO) not in generated  # stable stand-ins only
