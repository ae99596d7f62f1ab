"""What the images run, without Docker: the project's wheel, built from what the Dockerfile's
builder stage copies, installed alone in a fresh venv, runs the stacks' own Command lines
(infra_templates/compute.yaml) as the containers would: scratch space (HOME, TMPDIR,
MRICTL_HOME) in one folder, a working directory not to be written, no bytecode written.

The cpu image has no torch: its preprocess run has torch made unimportable. A probe in the
venv records, through Python's audit hooks, every file opened for writing (and every folder
made, file renamed or removed) outside the scratch folder; the run must leave that list empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from mrictl.backends.local import LocalBackend
from mrictl.infra.validate import load_template
from mrictl.pipeline.upload import upload
from tests.container.dockerfile import COMPUTE_TEMPLATE, DOCKERFILE, REPOSITORY, stage_named
from tests.mrictl.jobs_helpers import tree, write_tiny_scan

pytestmark = pytest.mark.slow

PIP = (sys.executable, "-m", "pip")
CPU_REQUIREMENTS = REPOSITORY / "scripts" / "container" / "cpu_requirements.py"

# Imported at start-up by every interpreter of the test venv (a .pth line): the container's
# limits, told in Python. Writes outside $CONTAINER_PROBE_SCRATCH are recorded and written at
# exit to probe-PID.json in the scratch folder, with whether torch was loaded and where mrictl
# came from; $CONTAINER_PROBE_NO_TORCH makes torch unimportable, as in the cpu image.
PROBE = r"""
import atexit, json, os, sys

_SCRATCH = os.environ.get("CONTAINER_PROBE_SCRATCH")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# event -> (index of a path argument, index of its dir_fd argument or None), as sys.audit
# passes them (docs.python.org/3/library/audit_events.html).
_PATH_EVENTS = {
    "os.mkdir": ((0, 2),), "os.remove": ((0, 1),), "os.rmdir": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)), "os.replace": ((0, 2), (1, 3)), "os.symlink": ((1, 2),),
    "os.link": ((1, 3),), "os.truncate": ((0, None),), "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),), "tempfile.mkstemp": ((0, None),), "tempfile.mkdtemp": ((0, None),),
    "sqlite3.connect": ((0, None),),
}

if _SCRATCH:
    _allowed = (os.path.realpath(_SCRATCH) + os.sep, "/dev/")
    _outside = []
    _busy = [False]

    def _note(event, path, dir_fd=None):
        if isinstance(path, int) or path is None:
            return
        try:
            name = os.fsdecode(path)
            if isinstance(dir_fd, int) and not os.path.isabs(name):
                name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
            name = os.path.abspath(name)
        except (TypeError, ValueError, OSError):
            return
        if name in (":memory:", "") or (name + os.sep).startswith(_allowed):
            return
        _outside.append([event, name])

    def _hook(event, args):
        if _busy[0]:
            return
        _busy[0] = True
        try:
            if event == "open" and isinstance(args[2], int) and args[2] & _WRITE_FLAGS:
                _note(event, args[0])
            elif event in _PATH_EVENTS:
                for index, fd_index in _PATH_EVENTS[event]:
                    dir_fd = args[fd_index] if fd_index is not None else None
                    _note(event, args[index], dir_fd)
        finally:
            _busy[0] = False

    def _dump():
        _busy[0] = True
        mrictl = sys.modules.get("mrictl")
        report = {
            "writes": _outside,
            "torch": "torch" in sys.modules,
            "mrictl": getattr(mrictl, "__file__", None),
        }
        with open(os.path.join(_SCRATCH, f"probe-{os.getpid()}.json"), "w") as handle:
            json.dump(report, handle)

    sys.addaudithook(_hook)
    atexit.register(_dump)

if os.environ.get("CONTAINER_PROBE_NO_TORCH"):
    class _NoTorch:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r} (cpu image)", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch)
"""


def builder_sources() -> list[tuple[str, str]]:
    """(source, destination) of the builder stage's COPYs into its work tree."""
    copies = []
    for each in stage_named(DOCKERFILE.read_text(encoding="utf-8"), "builder").all("COPY"):
        _, words = each.flags_and_words()
        *sources, destination = words
        if not destination.startswith("/"):  # the wheel's sources, not a tool for /usr/local
            copies += [(source.rstrip("/"), destination) for source in sources]
    return copies


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, as the builder stage makes it: `pip wheel --no-deps .` on what
    the stage copies (so that a source the Dockerfile forgets fails here)."""
    context = tmp_path_factory.mktemp("builder") / "src"
    context.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for source, destination in builder_sources():
        target = context / (source if destination in ("./", ".") else destination.rstrip("/"))
        if (REPOSITORY / source).is_dir():
            shutil.copytree(REPOSITORY / source, target, ignore=ignore)
        else:
            shutil.copy2(REPOSITORY / source, target)
    out = tmp_path_factory.mktemp("wheels")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out)]
    # The venv's setuptools builds it without a download; pip fetches one where it is missing.
    from importlib.metadata import PackageNotFoundError, version

    try:
        if int(version("setuptools").split(".")[0]) >= 68:
            command.append("--no-build-isolation")
    except PackageNotFoundError:
        pass
    completed = subprocess.run(
        [*command, "--quiet", str(context)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (built,) = out.glob("mrictl-*.whl")
    return built


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv holding the wheel alone; its dependencies come from the project's venv
    (after the venv's own packages, so that mrictl is the wheel's, not the checkout's)."""
    venv = tmp_path_factory.mktemp("image") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    site_packages = Path(site)
    (site_packages / "_container_probe.py").write_text(PROBE)
    (site_packages / "_container_probe.pth").write_text("import _container_probe\n")
    # A plain path line: the project venv's own .pth files (its editable mrictl) stay unread.
    (site_packages / "_image_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            *PIP,
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    return venv


@pytest.fixture
def container(tmp_path, image_venv):
    """(run, scratch, root): `run(argv, no_torch=...)` runs a command as the image would, with
    its scratch space in `scratch` and the unwritable `root` as working directory."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "workdir-marker").write_text("the image's files\n")
    root.chmod(0o555)

    def run(argv: list[str], *, no_torch: bool = False) -> subprocess.CompletedProcess:
        environment = {
            "PATH": f"{image_venv / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "MRICTL_HOME": str(scratch / "mrictl"),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
            "LANG": "C.UTF-8",
            "NO_COLOR": "1",
            "OMP_NUM_THREADS": "1",
            "CONTAINER_PROBE_SCRATCH": str(scratch),
        }
        if no_torch:
            environment["CONTAINER_PROBE_NO_TORCH"] = "1"
        return subprocess.run(
            argv,
            env=environment,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )

    yield run, scratch, root
    root.chmod(0o755)


def probe_report(scratch: Path) -> dict:
    """What the probe saw in the one process that ran since the last report was read."""
    (report,) = scratch.glob("probe-*.json")
    document = json.loads(report.read_text())
    report.unlink()
    return document


def stack_command(logical_id: str) -> list[str]:
    """The Command of a container in the compute stack."""
    resource = load_template(COMPUTE_TEMPLATE)["Resources"][logical_id]["Properties"]
    if "ContainerDefinitions" in resource:
        (container,) = resource["ContainerDefinitions"]
    else:
        container = resource["ContainerProperties"]
    return list(container["Command"])


# --- The wheel ----------------------------------------------------------------------------------


def test_the_wheel_holds_both_packages_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    for module in ("mrictl/__init__.py", "mrictl/cli/main.py", "mrictl/worker.py"):
        assert module in names, module
    for module in ("mrictl/pipeline/stages.py", "raki/__init__.py", "raki/scan.py"):
        assert module in names, module
    assert "mrictl = mrictl.cli.main:main" in scripts
    top_level = {name.split("/")[0] for name in names}
    assert {"mrictl", "raki"} <= top_level and "tests" not in top_level
    # Every module of the checkout's packages is in it (the tests run from the checkout).
    expected = {
        path.relative_to(REPOSITORY).as_posix()
        for package in ("mrictl", "raki")
        for path in (REPOSITORY / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert expected <= names, sorted(expected - names)


def test_the_cpu_requirements_are_the_projects_less_torch(wheel):
    completed = subprocess.run(
        [sys.executable, str(CPU_REQUIREMENTS), str(wheel)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    sys.path.insert(0, str(CPU_REQUIREMENTS.parent))
    try:
        from cpu_requirements import requirement_name
    finally:
        sys.path.remove(str(CPU_REQUIREMENTS.parent))
    listed = {requirement_name(line) for line in completed.stdout.splitlines()}
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(line) for line in project["dependencies"]}
    assert "torch" in declared and listed == declared - {"torch"}
    assert "pytest" not in listed  # extras stay out


# --- The entrypoint ---------------------------------------------------------------------------


def test_the_probe_sees_writes_and_hides_torch(container, tmp_path):
    run, scratch, _ = container
    elsewhere = tmp_path / "elsewhere.txt"
    completed = run(["python", "-c", f"open({str(elsewhere)!r}, 'w').close()"])
    assert completed.returncode == 0, completed.stderr
    assert probe_report(scratch)["writes"] == [["open", str(elsewhere)]]
    completed = run(["python", "-c", "import torch"], no_torch=True)
    assert "ModuleNotFoundError" in completed.stderr
    assert probe_report(scratch)["torch"] is False


def test_the_images_commands_preprocess_then_reconstruct(container, image_venv, tmp_path):
    run, scratch, root = container
    scan_file = write_tiny_scan(tmp_path / "scanner" / "knee.h5", undersampled=True)
    backend = LocalBackend(scratch / "mrictl")
    # A neural method, so that the gpu image's run needs torch; a few iterations on the CPU.
    sent = upload(backend, [scan_file], method="raki", options={"iterations": 5})
    # The image's files: its working directory, its installed code (no bytecode written).
    before = tree(root), tree(image_venv), tree(tmp_path / "scanner")

    # The Fargate task's Command, in the cpu image (no torch); --once so that it stops.
    preprocess = stack_command("PreprocessTaskDefinition")
    completed = run([*preprocess, "--once", "--json"], no_torch=True)
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["jobs_done"] == 1 and document["stages"] == ["preprocess"]
    preprocessed = backend.queue.get(sent.job_id)
    assert preprocessed.state.value == "succeeded"
    recon_id = preprocessed.result["next_job_id"]
    report = probe_report(scratch)
    assert report["writes"] == [] and report["torch"] is False
    assert Path(report["mrictl"]).is_relative_to(image_venv)  # the wheel's, not the checkout's

    # A Batch job definition's Command, in the gpu image, with the id SubmitJob passes.
    recon = [
        recon_id if word == "Ref::job_id" else word for word in stack_command("ReconJobDefinition")
    ]
    completed = run([*recon, "--json"])
    assert completed.returncode == 0, completed.stderr
    record = json.loads(completed.stdout)
    assert record["job_id"] == recon_id and record["state"] == "succeeded"
    report = probe_report(scratch)
    assert report["writes"] == [] and report["torch"] is True
    assert Path(report["mrictl"]).is_relative_to(image_venv)

    assert (tree(root), tree(image_venv), tree(tmp_path / "scanner")) == before
