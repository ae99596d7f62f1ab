"""The DICOM node flags shared by `fetch` and `watch`: where to deliver a series.

`--to-pacs HOST:PORT` names a node; `--pacs` means the configured one (the config's [pacs]
section, MRICTL_PACS_*). click cannot give an option a value only sometimes, so the two are
separate flags rather than one `--to-pacs` with an optional value. `--aet` and `--called-aet`
override the AE titles either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from mrictl.errors import ExitCode, MrictlError

if TYPE_CHECKING:
    from mrictl.pacs import PacsNode

ToPacsOption = Annotated[
    str | None,
    typer.Option(
        "--to-pacs",
        metavar="HOST:PORT",
        help="Send the DICOM series to this DICOM node by C-STORE ([::1]:104 for IPv6).",
    ),
]
PacsFlag = Annotated[
    bool,
    typer.Option(
        "--pacs",
        help="Send the DICOM series to the configured DICOM node (the config's pacs section, "
        "MRICTL_PACS_*).",
    ),
]
AetOption = Annotated[
    str | None,
    typer.Option("--aet", metavar="AE", help="Our AE title (default: pacs.calling_aet, MRICTL)."),
]
CalledAetOption = Annotated[
    str | None,
    typer.Option("--called-aet", metavar="AE", help="The node's AE title (pacs.called_aet)."),
]


def requested_node(
    to_pacs: str | None, pacs: bool, aet: str | None, called_aet: str | None
) -> PacsNode | None:
    """The node the flags ask for over the [pacs] settings, or None when none is asked for."""
    if not to_pacs and not pacs:
        if aet or called_aet:
            raise MrictlError("--aet and --called-aet go with --to-pacs or --pacs", ExitCode.USAGE)
        return None
    if to_pacs and pacs:
        raise MrictlError(
            "--to-pacs names a node and --pacs the configured one: give one of them",
            ExitCode.USAGE,
        )
    from mrictl.config import load_settings
    from mrictl.pacs import node_from_settings

    return node_from_settings(
        load_settings().pacs, address=to_pacs, calling_aet=aet, called_aet=called_aet
    )
