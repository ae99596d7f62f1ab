"""Process tuning for training: allocator thresholds and threads, safe to call twice."""

from __future__ import annotations

import torch

from raki.runtime import default_threads, raise_malloc_thresholds, tune_process


def test_tuning_is_idempotent_and_reports_what_it_did():
    first = tune_process()
    second = tune_process()
    assert first == second
    assert first.threads == torch.get_num_threads()
    assert set(first.as_dict()) == {"mallopt", "threads"}
    assert raise_malloc_thresholds() is first.mallopt


def test_threads_can_be_set_and_restored():
    before = torch.get_num_threads()
    try:
        assert tune_process(threads=1).threads == 1
    finally:
        torch.set_num_threads(before)
    assert default_threads() >= 1
