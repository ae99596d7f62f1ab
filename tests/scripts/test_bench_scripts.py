"""Every benchmark script (scripts/bench/*.py) and gen_json_examples.py, really run.

Each runs as a subprocess from the repository root on its smallest real workload (phantom
cases, a couple of iterations, one repeat) at one BLAS/torch thread, and the JSON it writes is
checked for what docs/benchmarks.md reads from it. Parts that need the shared brain files,
BART or pygrappa are skipped, with the reason, where those are missing.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from raki.methods import METHODS

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def shared_data() -> Path:
    """Where the scripts look for the brain files by default (grappa_peer.data_folder)."""
    if os.environ.get("MRICTL_SHARED_DATA"):
        return Path(os.environ["MRICTL_SHARED_DATA"])
    return (REPO / "../shared/data").resolve()


def has_pygrappa() -> bool:
    try:
        import pygrappa  # noqa: F401
    except ImportError:
        return False
    return True


def run_script(script: Path, *args: str, path: str | None = None) -> str:
    """`python script args` from the repository root at one thread; its stdout. `path`
    replaces PATH (to hide BART)."""
    env = {**os.environ, **ONE_THREAD}
    if path is not None:
        env["PATH"] = path
    completed = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def bench(name: str, tmp_path: Path, *args: str, path: str | None = None) -> dict:
    """Run scripts/bench/NAME.py with --out in tmp_path; the JSON it wrote."""
    out = tmp_path / f"{name}.json"
    run_script(BENCH / f"{name}.py", *args, "--out", str(out), path=path)
    return json.loads(out.read_text())


@pytest.fixture
def no_data(tmp_path: Path) -> str:
    """An empty data folder: the scripts run their phantom cases only, wherever this runs."""
    folder = tmp_path / "no-data"
    folder.mkdir()
    return str(folder)


def finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def without_bart() -> str:
    """A PATH with this interpreter's folder only, so that the scripts leave BART out."""
    return str(Path(sys.executable).parent)


def test_small_acs_scores_the_phantom_case(tmp_path: Path, no_data: str) -> None:
    payload = bench("small_acs", tmp_path, "--data", no_data)
    (case,) = payload["cases"]
    assert case["data"].startswith("phantom") and (case["R"], case["acs"]) == (6, 10)
    scores = case["nmse"]
    assert set(scores) == {"zerofill", "lattice_only", "patterns", "patterns_ceiling"}
    assert all(finite(value) for value in scores.values())
    # The method as it runs (with the power ceiling) beats zero-fill on an ACS small for R.
    assert scores["patterns_ceiling"] < scores["zerofill"]
    assert payload["machine"]["blas_threads"] == "1"


def test_linear_start_scores_the_phantoms(tmp_path: Path, no_data: str) -> None:
    payload = bench("linear_start", tmp_path, "--data", no_data)
    assert [case["data"] for case in payload["cases"]] == [
        "phantom 8ch SNR 5",
        "phantom 8ch SNR 50",
    ]
    for case in payload["cases"]:
        assert 0 < case["grappa_nmse"] < 1
        for key in ("real_3_lines", "complex_2_lines", "complex_2_lines_grappa_blind_spots"):
            assert finite(case[key]) and case[key] > 0  # NMSE over GRAPPA's


def test_heldout_guard_with_two_iterations(tmp_path: Path, no_data: str) -> None:
    payload = bench(
        "heldout_guard", tmp_path, "--data", no_data, "--cases", "phantom5", "--iterations", "2"
    )
    assert payload["iterations"] == 2
    (case,) = payload["cases"]
    assert case["case"] == "phantom5"
    assert case["best_iteration"] in (0, 2)  # read every 10 iterations, and at the end
    assert finite(case["best_over_grappa"]) and finite(case["final_over_grappa"])


def test_quality_on_one_phantom(tmp_path: Path, no_data: str) -> None:
    methods = "zerofill,grappa,rraki,default"
    payload = bench(
        "quality", tmp_path, "--data", no_data, "--only", "SNR 20", "--methods", methods,
        "--iterations", "2",
    )  # fmt: skip
    assert payload["iterations"] == 2
    (case,) = payload["cases"]
    assert (case["data"], case["R"], case["acs"]) == ("phantom 8ch SNR 20", 4, 24)
    rows = case["methods"]
    assert list(rows) == methods.split(",")
    for method in ("grappa", "rraki", "default"):
        assert finite(rows[method]["nmse"]) and rows[method]["nmse"] < rows["zerofill"]["nmse"]
        assert 0 < rows[method]["ssim"] <= 1
    assert rows["default"]["ran"] in METHODS  # what `recon run` runs unnamed (auto today)
    assert "phantom 8ch SNR 20" in payload["markdown"]


def check_cs_rows(rows: dict) -> None:
    for method in ("grappa", "cs", "cs_tikhonov", "cs_oracle", "cs_tikhonov_oracle"):
        assert finite(rows[method]["nmse"]), method
        assert rows[method]["nmse"] < rows["zerofill"]["nmse"], method
    # The oracle picks the best of a grid that holds the automatic weight (factor 1).
    assert rows["cs_oracle"]["nmse"] <= rows["cs"]["nmse"]
    assert rows["cs"]["weight"] > 0 and rows["cs"]["map_sets"] in (1, 2)


def test_cs_peer_on_one_phantom_without_bart(tmp_path: Path, no_data: str) -> None:
    payload = bench(
        "cs_peer", tmp_path, "--threads", "1", "--data", no_data, "--no-maps",
        "--only", "phantom 8ch SNR 20", path=without_bart(),
    )  # fmt: skip
    assert payload["machine"]["bart"] is None and payload["maps"] == []
    (case,) = payload["cases"]
    assert case["data"] == "phantom 8ch SNR 20"
    assert "bart" not in case["methods"]
    check_cs_rows(case["methods"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bart") is None, reason="BART (/usr/bin/bart) is not installed")
def test_cs_peer_with_bart(tmp_path: Path, no_data: str) -> None:
    payload = bench(
        "cs_peer", tmp_path, "--threads", "1", "--data", no_data, "--no-maps",
        "--only", "phantom 8ch SNR 20",
    )  # fmt: skip
    assert payload["machine"]["bart"]
    rows = payload["cases"][0]["methods"]
    check_cs_rows(rows)
    bart = rows["bart"]
    assert finite(bart["nmse"]) and bart["nmse"] < rows["zerofill"]["nmse"]
    assert bart["nmse"] == min(row["nmse"] for row in bart["sweep"].values())


AUTO_OUTCOMES = ("cs/extended", "cs/measured", "grappa")


def check_auto_case(case: dict) -> None:
    rows = case["methods"]
    selection = rows["auto"]["selection"]
    chosen = selection["method"]
    if chosen == "cs":
        chosen += "/" + selection["cs_grid"]["grid"]
    assert chosen in AUTO_OUTCOMES and case["chosen"] == chosen
    assert case["best_candidate"] == min(AUTO_OUTCOMES, key=lambda m: rows[m]["nmse"])
    # auto is the candidate it chose, on the grid it chose.
    assert rows["auto"]["nmse"] == pytest.approx(rows[chosen]["nmse"], rel=1e-6)
    assert all(finite(rows[m]["nmse"]) and rows[m]["seconds"] > 0 for m in AUTO_OUTCOMES)


def test_auto_peer_on_one_phantom_without_bart(tmp_path: Path, no_data: str) -> None:
    payload = bench(
        "auto_peer", tmp_path, "--threads", "1", "--data", no_data,
        "--only", "windowed phantom 8ch", path=without_bart(),
    )  # fmt: skip
    assert payload["machine"]["bart"] is None
    (case,) = payload["cases"]
    assert case["data"] == "windowed phantom 8ch SNR 20" and "bart" not in case["methods"]
    check_auto_case(case)


def test_auto_time_on_small_phantoms_without_bart(tmp_path: Path) -> None:
    payload = bench(
        "auto_time", tmp_path, "--threads", "1", "--repeats", "1", "--slices", "2",
        "--size", "48", path=without_bart(),
    )  # fmt: skip
    cases = payload["cases"]
    assert [(c["data"].split()[0], c["slices"]) for c in cases] == [
        ("periodic", 1), ("periodic", 2), ("windowed", 1), ("windowed", 2)
    ]  # fmt: skip
    for case in cases:
        assert case["bart_seconds"] == [] and case["bart_median"] is None
        assert len(case["auto_seconds"]) == 1 and case["auto_median"] > 0
        assert all(chosen.split("/")[0] in ("cs", "grappa") for chosen in case["chosen"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bart") is None, reason="BART (/usr/bin/bart) is not installed")
def test_auto_peer_with_bart(tmp_path: Path, no_data: str) -> None:
    payload = bench(
        "auto_peer", tmp_path, "--threads", "1", "--data", no_data,
        "--only", "windowed phantom 8ch",
    )  # fmt: skip
    (case,) = payload["cases"]
    check_auto_case(case)
    assert finite(case["methods"]["bart"]["nmse"]) and case["methods"]["bart"]["weight"] > 0


def test_learned_peer_smoke(tmp_path: Path) -> None:
    payload = bench("learned_peer", tmp_path, "--threads", "1", "--smoke")
    (case,) = payload["cases"]
    rows = case["methods"]
    assert list(rows) == ["zerofill", "grappa", "cs", "ssdu", "rraki"]
    for method in ("grappa", "cs", "ssdu", "rraki"):
        assert finite(rows[method]["nmse"]), method
        assert rows[method]["nmse"] < rows["zerofill"]["nmse"], method
        assert finite(rows[method]["psnr"]) and 0 < rows[method]["ssim"] <= 1
    assert rows["ssdu"]["epochs"] == [1]
    assert payload["large_slice"] == {}  # the 320 x 320 timing is left out in smoke mode
    assert "ssdu / cs" in payload["markdown"]


def test_parallel_slices_one_small_case(tmp_path: Path) -> None:
    payload = bench(
        "parallel_slices", tmp_path, "--slices", "2", "--iterations", "2", "--repeats", "1",
        "--cases", "4x64", "--methods", "rraki",
    )  # fmt: skip
    (row,) = payload["rows"]
    assert (row["case"], row["method"], row["slices"], row["iterations"]) == ("4x64", "rraki", 2, 2)
    assert row["sequential_s"] > 0 and row["parallel_s"] > 0
    assert row["sequential_over_parallel"] == pytest.approx(row["sequential_s"] / row["parallel_s"])
    assert payload["workers"] == os.cpu_count() and payload["worker_threads"] == 1


def test_speed_one_small_case(tmp_path: Path) -> None:
    payload = bench(
        "speed", tmp_path, "--repeats", "1", "--loop-iterations", "1", "--cases", "4x64",
        "--no-levers",
    )  # fmt: skip
    (row,) = payload["fused_vs_loop"]
    assert (row["coils"], row["readout"]) == (4, 64)
    assert row["fused_s"] > 0 and row["loop_s"] > 0 and row["gflops"] > 0
    assert payload["matmul_gflops"]["fp32"] > 0
    assert "levers_s_per_iteration" not in payload


def test_time_to_quality_two_iterations(tmp_path: Path) -> None:
    config = "rraki lr 1e-2 cosine, 200 it"
    payload = bench(
        "time_to_quality", tmp_path, "--cases", "phantom4x64", "--configs", config,
        "--iterations", "2", "--every", "1",
    )  # fmt: skip
    case = payload["cases"]["phantom4x64"]
    rows = case["rows"]
    assert list(rows) == ["raki faithful 2 it", config]
    assert case["bar"] == rows["raki faithful 2 it"]["final_nmse"]
    for row in rows.values():
        assert row["curve"] and row["curve"][-1]["iteration"] == 2
        assert row["config"]["iterations"] == 2
        assert all(finite(point["nmse"]) for point in row["curve"])


def test_grappa_peer_sweep_on_one_phantom(tmp_path: Path, no_data: str) -> None:
    payload = bench("grappa_peer", tmp_path, "--data", no_data, "--sweep-only", "--only", "snr 30")
    assert payload["cases"] == []
    sweep = payload["sweep"]
    assert {row["data"] for row in sweep["rows"]} == {"phantom 8ch snr 30"}
    assert {row["acceleration"] for row in sweep["rows"]} == {3, 4, 5, 6}
    for row in sweep["rows"]:
        assert row["best_nmse"] == min(row["nmse"]) and finite(row["auto_nmse"])
    assert sweep["summary"] and sweep["edge_factors"]


@pytest.mark.skipif(not has_pygrappa(), reason="pygrappa is only in the benchmark venv")
@pytest.mark.skipif(
    not (shared_data() / "brain_16ch_64x64.h5").is_file(), reason="../shared/data is missing"
)
def test_grappa_peer_against_pygrappa_on_one_file(tmp_path: Path) -> None:
    payload = bench("grappa_peer", tmp_path, "--only", "64x64", "--repeats", "1")
    assert payload["cases"]
    for case in payload["cases"]:
        methods = case["methods"]
        for name in ("ours default", "pygrappa default"):
            assert methods[name]["nmse"] < methods["zero-fill"]["nmse"]


@pytest.mark.skipif(
    not (shared_data() / "brain_16ch_96x96.h5").is_file(),
    reason="fastmri_masks.py reads the shared brain files only; ../shared/data is missing",
)
def test_fastmri_masks_on_one_file(tmp_path: Path) -> None:
    payload = bench("fastmri_masks", tmp_path, "--only", "96x96")
    by_r = {case["R"]: case for case in payload["cases"]}
    assert set(by_r) == {4, 8}
    r4 = by_r[4]
    assert r4["data"] == "brain_16ch_96x96.h5" and r4["gaps"]
    assert r4["grappa"]["nmse"] < r4["zerofill"]["nmse"]
    assert r4["grappa_lattice"]["nmse"] < r4["zerofill"]["nmse"]
    assert "too small" in by_r[8]["refused"]  # 4 ACS lines at R = 8: GRAPPA refuses


def test_gen_json_examples_quick_prints_and_leaves_the_page(tmp_path: Path) -> None:
    page = REPO / "docs" / "it-automation.md"
    before = page.read_bytes()
    printed = run_script(REPO / "scripts" / "ops" / "gen_json_examples.py", "--quick")
    assert page.read_bytes() == before  # --quick never rewrites the page
    assert printed.startswith("<!-- BEGIN generated by scripts/ops/gen_json_examples.py -->")
    assert "<!-- END generated by scripts/ops/gen_json_examples.py -->" in printed
    blocks = [part.split("```", 1)[0] for part in printed.split("```json\n")[1:]]
    documents = [json.loads(block) for block in blocks]
    assert printed.count("#### `scan ") == 3 and len(documents) == 3
    simulated, undersampled, info = documents
    assert simulated["coils"] == 4 and simulated["matrix"] == [32, 24]
    assert undersampled["acceleration"] == 2 and info["acs_lines"] == 8
