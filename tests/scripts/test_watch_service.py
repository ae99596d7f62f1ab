"""scripts/ops/mrictl-watch.service and its environment file: systemd accepts the unit, and its
ExecStart, expanded as systemd expands it with the file's variables, really watches a folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.pipeline import jobs
from tests.mrictl.jobs_helpers import write_tiny_scan
from tests.scripts.test_ops_scripts import OPS, mrictl_command

UNIT = OPS / "mrictl-watch.service"
ENV_FILE = OPS / "mrictl-watch.env"
# The production paths of the environment file, moved into the test's folder.
PATH_VARIABLES = ("MRICTL_WATCH_DIR", "MRICTL_HOME", "MRICTL_CONFIG", "XDG_CONFIG_HOME")


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: [Section] KEY=value, keys may repeat, # comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {raw!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile: KEY=value lines, comments, optional quotes, no expansion."""
    values = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, value = line.split("=", 1)
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), f"bad variable name {key!r}"
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def expand_exec(command: str, environment: dict[str, str]) -> list[str]:
    """ExecStart as systemd runs it: `${VAR}` becomes one argument, a word `$VAR` is split
    at whitespace into several (none when empty)."""
    words = []
    for word in shlex.split(command):
        alone = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if alone:
            words += environment.get(alone.group(1), "").split()
            continue
        words.append(
            re.sub(
                r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: environment.get(m.group(1), ""), word
            )
        )
    return words


def test_the_unit_is_hardened_and_restarts_on_failure():
    service = unit_sections(UNIT.read_text())["Service"]
    single = {key: values[-1] for key, values in service.items()}
    assert (
        single["User"] == "mrictl" and single["EnvironmentFile"] == "/etc/mrictl/mrictl-watch.env"
    )
    assert single["Restart"] == "on-failure"
    assert single["NoNewPrivileges"] == "yes" and single["ProtectSystem"] == "strict"
    assert single["PrivateTmp"] == "yes" and single["CapabilityBoundingSet"] == ""
    assert single["KillSignal"] == "SIGTERM"
    # The state and the home are the only writable places, and the environment file says so.
    assert single["StateDirectory"] == "mrictl"
    assert "/var/lib/mrictl" in single["ReadWritePaths"].split()
    assert environment_file(ENV_FILE.read_text())["MRICTL_HOME"] == "/var/lib/mrictl"
    program = shlex.split(single["ExecStart"])
    assert program[0].startswith("/") and program[1] == "watch"


def test_every_variable_of_the_environment_file_is_commented():
    lines = ENV_FILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^#?[A-Z_]+=", line) and not line.startswith("# "):
            before = lines[index - 1] if index else ""
            assert before.startswith("#"), f"{line!r} has no comment above it"


def test_systemd_accepts_the_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that the program exists: point it at this installation's mrictl.
    program = mrictl_command(tmp_path)
    unit = tmp_path / UNIT.name
    text = UNIT.read_text()
    original = shlex.split(unit_sections(text)["Service"]["ExecStart"][-1])[0]
    unit.write_text(text.replace(original, str(program)))
    completed = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line
        for line in (completed.stdout + completed.stderr).splitlines()
        if UNIT.name in line and "mrictl-watch.env" not in line
    ]
    assert completed.returncode == 0 and not problems, completed.stdout + completed.stderr


def service_command(tmp_path: Path, **settings: str) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart expanded with the environment file's variables (its paths moved
    into `tmp_path`, `settings` changed), run by this installation's mrictl."""
    variables = environment_file(ENV_FILE.read_text())
    variables.update(
        MRICTL_WATCH_DIR=str(tmp_path / "export"),
        MRICTL_HOME=str(tmp_path / "home"),
        MRICTL_CONFIG=str(tmp_path / "config.toml"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        MRICTL_WATCH_INTERVAL="0.5",  # a test need not wait 5 s between looks
        **settings,
    )
    assert set(PATH_VARIABLES) <= set(variables)
    command = expand_exec(unit_sections(UNIT.read_text())["Service"]["ExecStart"][-1], variables)
    command[0] = str(mrictl_command(tmp_path))
    offered = subprocess.run([command[0], "watch", "--help"], capture_output=True, timeout=60)
    if offered.returncode != 0:
        pytest.skip("this mrictl has no `watch` command yet")
    return command, {**os.environ, **variables}


def drop_scan(folder: Path) -> None:
    """A scan as the scanner exports it: the file, then its marker."""
    scan = write_tiny_scan(folder / "series-001.h5", seed=4, undersampled=True)
    scan.with_name(scan.name + ".done").write_text("")


def run_once(command: list[str], environment: dict[str, str]) -> list[dict]:
    completed = subprocess.run(
        [*command, "--once", "--json"], capture_output=True, text=True, env=environment, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "series-001" not in completed.stdout + completed.stderr  # ids only, no file name
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert events[0]["event"] == "started" and events[-1]["event"] == "stopped"
    return events


def test_exec_start_uploads_a_dropped_scan_once(tmp_path):
    """The service's own command line with --once: a scan dropped with its marker is uploaded,
    and a restart does not take it twice. (Without the file's --recon, which starts a worker:
    that path is below, marked slow, and in watch's own tests.)"""
    command, environment = service_command(tmp_path, MRICTL_WATCH_OPTIONS="")
    assert command[1:3] == ["watch", str(tmp_path / "export")]
    drop_scan(tmp_path / "export")
    first = run_once(command, environment)
    uploaded = [event for event in first if event["event"] == "uploaded"]
    assert len(uploaded) == 1 and uploaded[0]["scan_id"].startswith("scan-"), first
    stored = LocalBackend(tmp_path / "home").store.list()
    assert any(uploaded[0]["scan_id"] in key for key in stored), stored
    second = run_once(command, environment)
    assert not [event for event in second if event["event"] == "uploaded"], second


@pytest.mark.slow
def test_exec_start_with_the_files_options_reconstructs(tmp_path):
    command, environment = service_command(tmp_path, MRICTL_METHOD="grappa")
    assert "--recon" in command
    drop_scan(tmp_path / "export")
    run_once(command, environment)
    records = jobs.status(LocalBackend(tmp_path / "home"))
    recon = [r for r in records if r["stage"] == "recon"]
    assert len(recon) == 1 and recon[0]["state"] == "succeeded", records
