"""Real storage SCPs on 127.0.0.1 for the PACS tests: pynetdicom's own AE in a thread, and
dcmtk's `storescp` in a process; plus a small MR series as the recon stage writes it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mrictl.pacs import PacsNode, PacsUnreachableError, echo
from raki.fft import rss_image
from raki.io.dicom import write_dicom_series
from raki.phantom import simulate_scan

SCP_AET = "TESTSCP"
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700


def write_series(folder: Path, slices: int = 3, seed: int = 0) -> list[Path]:
    """A small MR Image series, written by the same code as a recon job's dicom/ output."""
    scan = simulate_scan(matrix=(32, 24), num_coils=4, num_slices=slices, seed=seed)
    return write_dicom_series(rss_image(scan.kspace), scan, folder, method="grappa")


class StorageScp:
    """pynetdicom's storage SCP: each C-STORE is counted, then answered by `answer(uid, n)`
    (n: how often that instance arrived, this time included); a success is saved to `folder`
    as `<SOP Instance UID>.dcm`."""

    def __init__(
        self,
        folder: Path,
        answer: Callable[[str, int], int] | None = None,
        *,
        require_called_aet: bool = False,
    ) -> None:
        self.folder = folder
        self.answer = answer or (lambda uid, n: SUCCESS)
        self.require_called_aet = require_called_aet
        self.received: Counter[str] = Counter()
        self.server = None

    def _on_store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        uid = str(dataset.SOPInstanceUID)
        self.received[uid] += 1
        status = self.answer(uid, self.received[uid])
        if status == SUCCESS:
            dataset.save_as(self.folder / f"{uid}.dcm", enforce_file_format=True)
        return status

    def __enter__(self) -> StorageScp:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
        from pynetdicom.sop_class import MRImageStorage, Verification

        self.folder.mkdir(parents=True, exist_ok=True)
        entity = AE(ae_title=SCP_AET)
        entity.require_called_aet = self.require_called_aet
        entity.add_supported_context(MRImageStorage, ALL_TRANSFER_SYNTAXES)
        entity.add_supported_context(Verification)
        self.server = entity.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def node(self) -> PacsNode:
        return PacsNode("127.0.0.1", self.port, SCP_AET)


def free_port() -> int:
    """A port nothing listens on (bound and released: a closed port, or one to start on)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dcmtk_program(name: str) -> str | None:
    """dcmtk's `name` on PATH: pynetdicom installs Python apps of the same names (storescp,
    echoscp) into the venv, ahead of dcmtk's on PATH."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = shutil.which(name, path=folder)
        if candidate is None:
            continue
        completed = subprocess.run(
            [candidate, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
        if "dcmtk" in (completed.stdout + completed.stderr).lower():
            return candidate
    return None


@contextlib.contextmanager
def dcmtk_storescp(folder: Path) -> Iterator[PacsNode]:
    """dcmtk's storescp (what a PACS does on receive) on a free port, files into `folder`."""
    program = dcmtk_program("storescp")
    if program is None:
        pytest.skip("dcmtk's storescp is not installed (apt-get install dcmtk)")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [program, "--aetitle", SCP_AET, "--output-directory", str(folder), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    node = PacsNode("127.0.0.1", port, SCP_AET)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                echo(node, timeout=2)
                break
            except PacsUnreachableError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("storescp did not start") from None
                time.sleep(0.05)
        yield node
    finally:
        process.terminate()
        process.wait(timeout=10)


def dciodvfy_errors(path: Path) -> list[str] | None:
    """The Error lines dicom3tools' dciodvfy finds in a file, or None when it is not installed."""
    program = shutil.which("dciodvfy")
    if program is None:
        return None
    completed = subprocess.run(
        [program, str(path)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    lines = (completed.stdout + completed.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
