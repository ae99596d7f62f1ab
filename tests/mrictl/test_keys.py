"""Object keys: built in mrictl/keys.py only, from ids and names this code chose."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mrictl import keys

PACKAGE = Path(__file__).resolve().parents[2] / "mrictl"
# A key being built: an area followed by "/" in a string, or an area constant in an f-string.
KEY_BUILDING = re.compile(
    r"""(["'{]|f["'])(uploads|preprocessed|reconstructed|weights)/"""
    r"""|\{(keys\.)?(UPLOADS|PREPROCESSED|RECONSTRUCTED|WEIGHTS)\}"""
)


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines outside docstrings and comments (docs may show key layouts)."""
    text = path.read_text()
    text = re.sub(r'"""(.|\n)*?"""', lambda m: "\n" * m.group(0).count("\n"), text)
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if not line.lstrip().startswith("#")
    ]


def test_no_module_but_keys_builds_an_object_key():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "keys.py" or path.parent != PACKAGE
        for number, line in code_lines(path)
        if KEY_BUILDING.search(line)
    ]
    assert offenders == []


def test_the_layout():
    scan, job = "scan-0123456789abcdef", "job-00112233445566ff"
    assert keys.upload(scan) == f"uploads/{scan}.tar"
    assert keys.scan_id_of_upload(f"uploads/{scan}.tar") == scan
    assert keys.scan_id_of_upload("uploads/Doe_Jane.tar") is None
    assert keys.preprocessed(scan) == f"preprocessed/{scan}.h5"
    assert keys.outputs_prefix(keys.RECONSTRUCTED, job) == f"reconstructed/{job}/"
    assert keys.output(keys.RECONSTRUCTED, job, "dicom/IM0001.dcm") == (
        f"reconstructed/{job}/dicom/IM0001.dcm"
    )
    assert keys.weights(job) == f"weights/{job}/weights.pt"
    assert keys.idempotency_of_upload(scan) == f"uploads/{scan}"
    assert keys.uploads_prefix() == "uploads/"  # what a Storage Gateway share maps
    assert keys.upload(scan).startswith(keys.uploads_prefix())


@pytest.mark.parametrize(
    "build",
    [
        lambda: keys.upload("Doe_Jane_MRN12345"),
        lambda: keys.preprocessed("scan-0123"),
        lambda: keys.weights("job-../../etc"),
        lambda: keys.outputs_prefix(keys.UPLOADS, "job-00112233445566ff"),
        lambda: keys.output(keys.RECONSTRUCTED, "job-00112233445566ff", "../escape"),
        lambda: keys.output(keys.RECONSTRUCTED, "job-00112233445566ff", ".hidden"),
        lambda: keys.output(keys.RECONSTRUCTED, "job-00112233445566ff", "a/ b"),
    ],
)
def test_anything_but_ids_and_safe_names_is_refused(build):
    with pytest.raises(keys.InvalidKeyPart):
        build()
