"""Requests for queued work, checked before anything is queued: a typo must fail at submit,
not after a queue wait on a GPU. Shared by the upload flow and the job service functions.
Names are checked without torch (`recon submit` starts at once); only training settings,
when given, load the science that defines them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mrictl import keys
from mrictl.backends.base import Backend
from mrictl.choices import check_cs_settings, check_method_and_device
from mrictl.errors import ExitCode, MrictlError
from raki.method_names import DEFAULT_METHOD, METHODS, NEURAL_METHODS

# Options a recon job accepts, with their types; anything else is refused at submit.
RECON_OPTIONS: dict[str, type] = {
    "acceleration": int,
    "acs_lines": int,
    "device": str,
    "iterations": int,
    "compare": list,  # methods scored beside the main one when a reference is known
    "training": dict,  # TrainingConfig fields to change (mrictl.recon_service.training_config)
    "weights_job": str,  # a train job whose stored weights the recon applies
    "cs_regularizer": str,  # how cs runs, alone or chosen by auto (raki.sense)
    "cs_weight": float,
    "cs_grid": str,  # cs's image grid (raki.method_names.CS_GRIDS); absent: auto tests both
}
# The options that only cs (alone or chosen by auto) takes.
CS_OPTIONS = frozenset({"cs_regularizer", "cs_weight", "cs_grid"})
# Options a train job accepts.
TRAIN_OPTIONS = ("acceleration", "acs_lines", "device", "iterations", "training")


def recon_request(method: str | None, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a method and its options before anything is queued; returns the payload part."""
    if (method or DEFAULT_METHOD) not in METHODS:
        raise MrictlError(
            f"unknown method {method!r}; choose one of {', '.join(METHODS)}", ExitCode.USAGE
        )
    clean: dict[str, Any] = {}
    for name, value in (options or {}).items():
        if value is None:
            continue
        kind = RECON_OPTIONS.get(name)
        if kind is None:
            raise MrictlError(
                f"unknown option {name!r}; known: {', '.join(RECON_OPTIONS)}", ExitCode.USAGE
            )
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise MrictlError(f"option {name!r} must be a {kind.__name__}", ExitCode.USAGE)
        if kind is list:
            unknown = [m for m in value if m not in METHODS]
            if unknown:
                raise MrictlError(
                    f"cannot compare with unknown method {unknown[0]!r}", ExitCode.USAGE
                )
            clean[name] = list(value)
            continue
        if kind is dict:
            from mrictl.recon_service import training_config

            training_config(value)  # unknown fields are refused now, not at the worker
            clean[name] = dict(value)
            continue
        if name == "device":
            check_method_and_device(None, value)  # a typo fails now, not after a queue wait
        if name == "cs_regularizer":
            check_cs_settings(value, None)
        if name == "cs_weight":
            check_cs_settings(None, value)
        if name == "cs_grid":
            check_cs_settings(None, None, value)
        if name == "weights_job" and not keys.is_job_id(value):
            raise MrictlError(f"{value!r} is not a job id (job-...)", ExitCode.USAGE)
        if kind is int and value < (0 if name == "acs_lines" else 1):
            raise MrictlError(f"option {name!r} is out of range: {value}", ExitCode.USAGE)
        clean[name] = value
    if CS_OPTIONS & set(clean) and (
        (method or DEFAULT_METHOD) not in ("cs", "auto") or "weights_job" in clean
    ):
        raise MrictlError(
            "--cs-regularizer, --cs-weight and --cs-grid apply to cs and auto only; leave them out",
            ExitCode.USAGE,
        )
    if "weights_job" in clean and ({"iterations", "training"} & set(clean)):
        raise MrictlError(
            "--weights applies saved networks: training flags do not apply to them; leave them out",
            ExitCode.USAGE,
        )
    request: dict[str, Any] = {"method": method or DEFAULT_METHOD, "options": clean}
    if method is None and "weights_job" not in clean:
        # Not chosen: the worker may fall back from the default (raki.methods.default_method_for).
        request["default_method"] = True
    return request


def train_request(method: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check a training request (a neural method, recon's options but `compare`)."""
    if method not in NEURAL_METHODS:
        raise MrictlError(
            f"cannot train {method!r}; choose one of {', '.join(NEURAL_METHODS)}", ExitCode.USAGE
        )
    given = {name: value for name, value in (options or {}).items() if value is not None}
    extra = sorted(set(given) - set(TRAIN_OPTIONS))
    if extra:
        raise MrictlError(f"option {extra[0]!r} does not apply to training", ExitCode.USAGE)
    return {"method": method, "options": recon_request(method, given)["options"]}


def enqueue_recon(
    backend: Backend,
    scan_id: str,
    *,
    method: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Queue the reconstruction of a scan that is already preprocessed."""
    return backend.queue.enqueue("recon", {"scan_id": scan_id, **recon_request(method, options)})


def enqueue_preprocess(
    backend: Backend,
    scan_id: str,
    request: Mapping[str, Any],
    *,
    next_stage: str = "recon",
    idempotency_key: str | None = None,
) -> str:
    """Queue the preprocess of an uploaded scan, carrying the request on to its next stage."""
    payload = {"scan_id": scan_id, "next_stage": next_stage, **request}
    return backend.queue.enqueue("preprocess", payload, idempotency_key=idempotency_key)
