"""Train once, save, load, apply later: same reconstruction; weights that do not fit are refused."""

import numpy as np
import pytest
import torch

from raki import __version__
from raki.errors import FileFormatError, IncompatibleWeightsError, InvalidScanError
from raki.methods import reconstruct
from raki.phantom import simulate_scan
from raki.sampling import AcsBlock
from raki.scan import Scan
from raki.train import train_scan
from raki.weights import RakiWeights, kspace_sha256
from tests.raki.test_train import undersampled


@pytest.fixture(scope="module")
def full() -> Scan:
    return simulate_scan((32, 24), num_coils=3, num_slices=2, seed=2)


@pytest.fixture(scope="module")
def scan(full) -> Scan:
    return undersampled(full, 2, 8)


@pytest.fixture(scope="module", params=["raki", "rraki"])
def weights(request, scan) -> RakiWeights:
    return train_scan(scan, request.param, iterations=20)


def test_save_load_round_trip_reconstructs_identically(tmp_path, scan, weights):
    path = weights.save(tmp_path / "weights.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pt"]  # no temporary left
    loaded = RakiWeights.load(path)
    assert loaded.metadata() == weights.metadata()
    for saved, restored in zip(weights.state_dicts, loaded.state_dicts, strict=True):
        assert saved.keys() == restored.keys()
        for name in saved:
            torch.testing.assert_close(saved[name], restored[name], rtol=0, atol=0)
    direct = reconstruct(scan, weights.method, weights=weights)
    later = reconstruct(scan, weights.method, weights=loaded)
    np.testing.assert_array_equal(direct.kspace, later.kspace)
    assert later.timings["train_s"] == 0.0 and later.details["trained_here"] is False


def test_rraki_weights_carry_their_grappa_kernel(tmp_path, scan, weights):
    if weights.method != "rraki":
        assert weights.grappa is None
        return
    assert weights.grappa is not None and weights.grappa.num_slices == 2
    loaded = RakiWeights.load(weights.save(tmp_path / "rraki.pt"))
    np.testing.assert_array_equal(loaded.grappa.weights, weights.grappa.weights)
    assert loaded.grappa.kernel_size == weights.grappa.kernel_size
    assert loaded.grappa.regularization == weights.grappa.regularization
    shorter = scan.replace(
        kspace=scan.kspace[..., 2:],
        sampled=scan.sampled[2:],
        acs=AcsBlock(scan.acs.start - 2, scan.acs.stop - 2),
    )
    with pytest.raises(IncompatibleWeightsError, match="GRAPPA kernel does not fit"):
        reconstruct(shorter, "rraki", weights=weights)


def test_metadata_says_what_was_trained_on(scan, weights):
    metadata = weights.metadata()
    assert metadata["input_sha256"] == kspace_sha256(scan.kspace)
    assert metadata["library_version"] == __version__
    assert metadata["matrix"] == [32, 24] and metadata["num_slices"] == 2
    assert metadata["acs_lines"] == 8 and metadata["acceleration"] == 2
    assert metadata["hyperparameters"]["iterations"] == 20
    assert len(metadata["final_losses"]) == 2


def test_weights_apply_to_a_later_frame(full, weights):
    """A later frame (other noise, other scale) of the same set-up reuses the trained networks."""
    later = simulate_scan((32, 24), num_coils=3, num_slices=2, seed=9)
    frame = undersampled(later, 2, 8)
    frame = frame.replace(kspace=frame.kspace * 3.0)
    result = reconstruct(frame, weights.method, weights=weights)
    np.testing.assert_array_equal(
        result.kspace[..., frame.sampled], frame.kspace[..., frame.sampled]
    )
    assert np.all(np.abs(result.kspace).sum(axis=(0, 1, 2)) > 0)


def test_incompatible_weights_are_refused_with_the_reason(full, scan, weights):
    other_method = "raki" if weights.method == "rraki" else "rraki"
    with pytest.raises(IncompatibleWeightsError, match=f"trained for '{weights.method}'"):
        reconstruct(scan, other_method, weights=weights)
    cases = {
        "expect 3 coils, the scan has 2": scan.replace(kspace=scan.kspace[:, :2]),
        "trained at R=2, the scan has R=3": undersampled(full, 3, 8),
        "hold 2 slice.*the scan has 1": scan.replace(kspace=scan.kspace[:1]),
        "32 readout points, the scan has 30": scan.replace(kspace=scan.kspace[:, :, :30]),
    }
    for reason, other in cases.items():
        with pytest.raises(IncompatibleWeightsError, match=reason):
            reconstruct(other, weights.method, weights=weights)


def test_unreadable_files_name_the_file_only(tmp_path):
    folder = tmp_path / "Patient Doe"
    folder.mkdir()
    garbage = folder / "weights.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(FileFormatError, match=r"^weights\.pt: not a readable") as error:
        RakiWeights.load(garbage)
    assert "Patient" not in str(error.value)
    foreign = folder / "other.pt"
    torch.save({"format": "something else"}, foreign)
    with pytest.raises(FileFormatError, match="not a raki weights file"):
        RakiWeights.load(foreign)
    with pytest.raises(FileFormatError, match=r"missing\.pt: no such file"):
        RakiWeights.load(folder / "missing.pt")


def test_weights_of_an_older_format_say_to_train_again(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": "raki-weights", "format_version": 1}, path)
    with pytest.raises(FileFormatError, match="older release: train again"):
        RakiWeights.load(path)


def test_a_flipped_byte_in_a_tensor_is_refused_not_applied(tmp_path, weights):
    import zipfile

    path = weights.save(tmp_path / "w.pt")
    with zipfile.ZipFile(path) as archive:
        member = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size)
    # A tensor's bytes start after the member's local header (30 bytes + name + extra field).
    raw = bytearray(path.read_bytes())
    local_extra = int.from_bytes(
        raw[member.header_offset + 28 : member.header_offset + 30], "little"
    )
    start = member.header_offset + 30 + len(member.filename.encode()) + local_extra
    raw[start : start + 4] = b"\xff\xff\x7f\x7f"
    path.write_bytes(bytes(raw))
    with pytest.raises(FileFormatError, match="corrupt weights file"):
        RakiWeights.load(path)


def test_hand_edited_networks_are_refused_with_a_reason(tmp_path, weights):
    import dataclasses

    bad_layers = dataclasses.replace(
        weights, state_dicts=[{"x": torch.zeros(1)}] * len(weights.state_dicts)
    )
    path = bad_layers.save(tmp_path / "layers.pt")
    with pytest.raises(FileFormatError, match=r"not r?raki's layers"):
        RakiWeights.load(path)
    wrong_hidden = dataclasses.replace(
        weights, hyperparameters={**weights.hyperparameters, "hidden": [16, 4]}
    )
    with pytest.raises(FileFormatError, match="wrong shape"):
        RakiWeights.load(wrong_hidden.save(tmp_path / "hidden.pt"))
    short = dataclasses.replace(weights, scales=[])
    with pytest.raises(FileFormatError, match="scales"):
        RakiWeights.load(short.save(tmp_path / "scales.pt"))


def test_networks_that_give_nan_never_make_an_image(scan, weights):
    import dataclasses

    broken = [
        {name: torch.full_like(t, float("nan")) for name, t in s.items()}
        for s in weights.state_dicts
    ]
    with pytest.raises(InvalidScanError, match="non-finite"):
        reconstruct(scan, weights.method, weights=dataclasses.replace(weights, state_dicts=broken))
