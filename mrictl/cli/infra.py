"""`mrictl infra`: the cloud infrastructure's CloudFormation templates (infra_templates/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrictl.cli.common import JsonFlag

app = typer.Typer(
    help="Cloud infrastructure: check the CloudFormation templates.", no_args_is_help=True
)


@app.command("validate")
def validate(
    templates: Annotated[
        Path | None,
        typer.Option("--templates", help="Folder of templates (default: infra_templates/)."),
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Run cfn-lint, checkov and mrictl's own rules on every template.

    Exit 0 when all are clean, 3 with one line per finding otherwise, 2 when a checker is not
    installed (cfn-lint in the project's venv; checkov in its own, see $MRICTL_CHECKOV).
    """
    from mrictl.errors import ExitCode
    from mrictl.infra.validate import default_templates_dir, validate_templates
    from mrictl.output import Output

    report = validate_templates(templates or default_templates_dir())

    def render(console) -> None:
        for finding in report.findings:
            console.print(finding.line(), markup=False, highlight=False, soft_wrap=True)
        checkers = ", ".join(report.checkers)
        if report.clean:
            console.print(f"{len(report.templates)} templates clean ({checkers})", markup=False)
        else:
            count = len(report.findings)
            summary = f"{count} finding{'s' * (count != 1)} in {len(report.templates)} templates"
            console.print(summary, markup=False)

    Output(json).result(report.to_dict(), render)
    if not report.clean:
        raise typer.Exit(int(ExitCode.BAD_INPUT))
