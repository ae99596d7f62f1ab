"""Checks of the CloudFormation templates: cfn-lint, checkov, and our own rules for data at rest
and in transit.

checkov has no CloudFormation check that a bucket policy denies plain HTTP and TLS below 1.2,
and neither checker knows that S3 delivers server access logs only to an SSE-S3 bucket: our
rules (`check_template`) do, and they insist that every suppression of a checker's rule gives
its reason. Every problem becomes one `Finding`, one line: `template: resource: what is wrong`.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mrictl.errors import ExitCode, MrictlError

REPOSITORY = Path(__file__).resolve().parents[2]
TEMPLATE_SUFFIXES = (".yaml", ".yml")
CHECKER_TIMEOUT_S = 600
INSTALL_CFN_LINT = "install it in the project's venv: pip install -e '.[test]'"
INSTALL_CHECKOV = (
    "give it its own venv (it pins an old boto3): python3 -m venv .venv-checkov && "
    ".venv-checkov/bin/pip install checkov==3.3.30, or set MRICTL_CHECKOV to a checkov"
)
# Customer keys only: the AWS-managed SQS key cannot be granted to S3 event notifications.
AWS_MANAGED_SQS_KEY = "alias/aws/sqs"


@dataclass(frozen=True)
class Finding:
    """One problem in one template."""

    template: str  # the file name
    resource: str  # the logical id, or "" for the template as a whole
    message: str
    checker: str  # cfn-lint, checkov or mrictl
    rule: str  # the checker's rule id: E3012, CKV_AWS_18, bucket-tls ...

    def line(self) -> str:
        where = self.resource or "(template)"
        return f"{self.template}: {where}: {self.message} ({self.checker} {self.rule})"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class ValidationReport:
    templates: list[str]
    checkers: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "templates": self.templates,
            "checkers": self.checkers,
            "clean": self.clean,
            "findings": [finding.to_dict() for finding in self.findings],
        }


class TemplateError(MrictlError):
    """A file that is not a readable CloudFormation template."""


# --- Reading templates ---------------------------------------------------------------------


def default_templates_dir() -> Path:
    """infra_templates/ beside the package (a checkout), else in the current directory."""
    beside = REPOSITORY / "infra_templates"
    return beside if beside.is_dir() else Path.cwd() / "infra_templates"


def template_paths(directory: Path) -> list[Path]:
    """The templates of a folder, by name."""
    if not directory.is_dir():
        raise MrictlError(f"{directory.name}: no such folder of templates", ExitCode.NOT_FOUND)
    paths = sorted(p for p in directory.iterdir() if p.suffix in TEMPLATE_SUFFIXES)
    if not paths:
        raise MrictlError(f"{directory.name}: holds no .yaml templates", ExitCode.NOT_FOUND)
    return paths


def _import_yaml() -> Any:
    try:
        import yaml
    except ImportError as error:
        raise MrictlError(f"PyYAML is not installed: {INSTALL_CFN_LINT}", ExitCode.USAGE) from error
    return yaml


def _construct_function(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
    """`!Ref x` -> {"Ref": x}, `!Condition c` -> {"Condition": c}, `!Sub s` -> {"Fn::Sub": s}."""
    yaml = _import_yaml()
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    name = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    return {name: value}


@functools.cache
def _template_loader() -> type:
    yaml = _import_yaml()

    class TemplateLoader(yaml.SafeLoader):
        """YAML with CloudFormation's short-form functions (!Ref, !Sub, !GetAtt ...)."""

    TemplateLoader.add_multi_constructor("!", _construct_function)
    return TemplateLoader


def load_template(path: Path) -> dict[str, Any]:
    """A template in CloudFormation's JSON form: `!Sub x` becomes {"Fn::Sub": x}."""
    yaml = _import_yaml()
    try:
        with path.open(encoding="utf-8") as stream:
            document = yaml.load(stream, Loader=_template_loader())
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise TemplateError(f"{path.name}: not YAML: {reason}", ExitCode.BAD_INPUT) from error
    if not isinstance(document, dict) or not isinstance(document.get("Resources"), dict):
        raise TemplateError(f"{path.name}: not a CloudFormation template (no Resources)")
    return document


# --- Our rules -----------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _refers_to(expression: Any, logical_id: str) -> bool:
    """Whether an expression names the resource: Ref, GetAtt, or ${Id} / ${Id.Attr} in a Sub."""
    if isinstance(expression, list):
        return any(_refers_to(item, logical_id) for item in expression)
    if not isinstance(expression, dict):
        return False
    if expression.get("Ref") == logical_id:
        return True
    get_att = expression.get("Fn::GetAtt")
    if isinstance(get_att, list) and get_att and get_att[0] == logical_id:
        return True
    sub = expression.get("Fn::Sub")
    text = sub[0] if isinstance(sub, list) and sub else sub
    pattern = rf"\$\{{{re.escape(logical_id)}(\.[A-Za-z0-9.]+)?\}}"
    if isinstance(text, str) and re.search(pattern, text):
        return True
    return any(_refers_to(value, logical_id) for value in expression.values())


def _names_objects(expression: Any) -> bool:
    """Whether a resource expression ends in `/*` (the bucket's objects, not the bucket)."""
    if isinstance(expression, str):
        return expression.endswith("/*")
    if isinstance(expression, dict):
        sub = expression.get("Fn::Sub")
        text = sub[0] if isinstance(sub, list) and sub else sub
        if isinstance(text, str):
            return text.endswith("/*")
        join = expression.get("Fn::Join")
        if isinstance(join, list) and len(join) == 2 and isinstance(join[1], list) and join[1]:
            return _names_objects(join[1][-1])
    return False


def _condition_value(statement: Mapping[str, Any], operator: str, key: str) -> Any:
    """A statement's condition value for operator and key (condition keys ignore case)."""
    conditions = statement.get("Condition")
    block = conditions.get(operator) if isinstance(conditions, dict) else None
    if not isinstance(block, dict):
        return None
    for name, value in block.items():
        if isinstance(name, str) and name.lower() == key.lower():
            return value
    return None


def _denies_everyone(statement: Mapping[str, Any], logical_id: str) -> bool:
    """A Deny of every S3 action, to every principal, on the bucket and on its objects."""
    if statement.get("Effect") != "Deny":
        return False
    if statement.get("Principal") not in ("*", {"AWS": "*"}):
        return False
    if not {"s3:*", "*"} & set(_as_list(statement.get("Action"))):
        return False
    resources = [r for r in _as_list(statement.get("Resource")) if _refers_to(r, logical_id)]
    return any(_names_objects(r) for r in resources) and any(
        not _names_objects(r) for r in resources
    )


def _denies_plain_http(statement: Mapping[str, Any]) -> bool:
    values = _as_list(_condition_value(statement, "Bool", "aws:SecureTransport"))
    return bool(values) and all(str(v).lower() == "false" for v in values)


def _denies_old_tls(statement: Mapping[str, Any]) -> bool:
    values = _as_list(_condition_value(statement, "NumericLessThan", "s3:TlsVersion"))
    try:
        return bool(values) and all(float(v) >= 1.2 for v in values)
    except (TypeError, ValueError):
        return False


def _policy_statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    document = policy.get("Properties", {}).get("PolicyDocument", {})
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            return []
    if not isinstance(document, dict):
        return []
    return [s for s in _as_list(document.get("Statement")) if isinstance(s, dict)]


def _resources_of_type(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource
        for logical_id, resource in template.get("Resources", {}).items()
        if isinstance(resource, dict) and resource.get("Type") == kind
    }


def _properties(resource: Mapping[str, Any]) -> dict[str, Any]:
    properties = resource.get("Properties")
    return properties if isinstance(properties, dict) else {}


def _bucket_findings(
    logical_id: str, bucket: Mapping[str, Any], template: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """(rule, message) for each way a bucket falls short."""
    problems: list[tuple[str, str]] = []
    properties = _properties(bucket)
    statements = [
        statement
        for policy in _resources_of_type(template, "AWS::S3::BucketPolicy").values()
        if _refers_to(_properties(policy).get("Bucket"), logical_id)
        for statement in _policy_statements(policy)
    ]
    denials = [s for s in statements if _denies_everyone(s, logical_id)]
    if not statements:
        problems.append(
            ("bucket-tls", "no AWS::S3::BucketPolicy denies plain-HTTP and TLS < 1.2 access")
        )
    else:
        if not any(_denies_plain_http(s) for s in denials):
            problems.append(
                (
                    "bucket-tls",
                    "its policy does not deny s3:* on the bucket and its objects when "
                    "aws:SecureTransport is false",
                )
            )
        if not any(_denies_old_tls(s) for s in denials):
            problems.append(
                (
                    "bucket-tls",
                    "its policy does not deny s3:* on the bucket and its objects when "
                    "s3:TlsVersion is NumericLessThan 1.2",
                )
            )

    block = properties.get("PublicAccessBlockConfiguration")
    settings = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    if not isinstance(block, dict) or not all(_is_true(block.get(name)) for name in settings):
        problems.append(
            (
                "bucket-public-access",
                f"PublicAccessBlockConfiguration must set {', '.join(settings)}",
            )
        )

    encryption = properties.get("BucketEncryption")
    rules = (
        encryption.get("ServerSideEncryptionConfiguration") if isinstance(encryption, dict) else []
    )
    algorithms = {
        (rule.get("ServerSideEncryptionByDefault") or {}).get("SSEAlgorithm"): rule
        for rule in _as_list(rules)
        if isinstance(rule, dict)
    }
    log_target = any(
        _refers_to((_properties(other).get("LoggingConfiguration") or {}), logical_id)
        for other_id, other in _resources_of_type(template, "AWS::S3::Bucket").items()
        if other_id != logical_id
    )
    if log_target:
        if "AES256" not in algorithms:
            problems.append(
                (
                    "bucket-encryption",
                    "it receives S3 server access logs, which S3 delivers only to a bucket "
                    "encrypted with SSE-S3 (AES256), never SSE-KMS",
                )
            )
    else:
        kms = algorithms.get("aws:kms") or algorithms.get("aws:kms:dsse")
        if kms is None or not _is_true(kms.get("BucketKeyEnabled")):
            problems.append(
                ("bucket-encryption", "BucketEncryption must use aws:kms with BucketKeyEnabled")
            )

    versioning = properties.get("VersioningConfiguration")
    if not isinstance(versioning, dict) or versioning.get("Status") != "Enabled":
        problems.append(("bucket-versioning", "VersioningConfiguration Status must be Enabled"))

    ownership = properties.get("OwnershipControls")
    owner_rules = ownership.get("Rules") if isinstance(ownership, dict) else []
    if not any(
        isinstance(rule, dict) and rule.get("ObjectOwnership") == "BucketOwnerEnforced"
        for rule in _as_list(owner_rules)
    ):
        problems.append(
            ("bucket-ownership", "OwnershipControls must set ObjectOwnership BucketOwnerEnforced")
        )
    return problems


def _redrive_target(queue: Mapping[str, Any]) -> Any:
    redrive = _properties(queue).get("RedrivePolicy")
    if isinstance(redrive, str):
        try:
            redrive = json.loads(redrive)
        except ValueError:
            return None
    return redrive.get("deadLetterTargetArn") if isinstance(redrive, dict) else None


def _queue_findings(
    logical_id: str, queue: Mapping[str, Any], queues: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    key = _properties(queue).get("KmsMasterKeyId")
    if not key:
        problems.append(("queue-encryption", "KmsMasterKeyId is missing (SSE-KMS with our key)"))
    elif key == AWS_MANAGED_SQS_KEY:
        problems.append(
            (
                "queue-encryption",
                f"KmsMasterKeyId {AWS_MANAGED_SQS_KEY} cannot be granted to S3 and other "
                "services: use the project's key",
            )
        )
    is_dead_letter_queue = any(
        _refers_to(_redrive_target(other), logical_id)
        for other_id, other in queues.items()
        if other_id != logical_id
    )
    if not is_dead_letter_queue and not _redrive_target(queue):
        problems.append(
            ("queue-dead-letter", "no RedrivePolicy: a poison message would be retried forever")
        )
    return problems


def _suppression_findings(metadata: Any) -> list[tuple[str, str]]:
    """Every checkov skip carries a comment; every cfn-lint ignore a reason under mrictl."""
    if not isinstance(metadata, dict):
        return []
    problems: list[tuple[str, str]] = []
    checkov = metadata.get("checkov")
    skips = checkov.get("skip") if isinstance(checkov, dict) else []
    for skip in _as_list(skips):
        comment = skip.get("comment") if isinstance(skip, dict) else None
        if not isinstance(comment, str) or not comment.strip():
            rule = skip.get("id", "?") if isinstance(skip, dict) else str(skip)
            problems.append(("suppression-reason", f"checkov skip {rule} gives no comment"))
    cfn_lint = metadata.get("cfn-lint")
    config = cfn_lint.get("config") if isinstance(cfn_lint, dict) else None
    ignored = config.get("ignore_checks") if isinstance(config, dict) else []
    ours = metadata.get("mrictl")
    reasons = ours.get("reasons") if isinstance(ours, dict) else None
    reasons = reasons if isinstance(reasons, dict) else {}
    for rule in _as_list(ignored):
        reason = reasons.get(rule)
        if not isinstance(reason, str) or not reason.strip():
            problems.append(
                (
                    "suppression-reason",
                    f"cfn-lint ignore {rule} gives no reason (Metadata: mrictl: reasons: {rule})",
                )
            )
    return problems


def check_template(name: str, template: Mapping[str, Any]) -> list[Finding]:
    """Our rules: every bucket is private, versioned, KMS-encrypted (its access-log bucket
    SSE-S3), owner-enforced, and denies plain HTTP and TLS < 1.2 in its policy; every queue is
    KMS-encrypted and has a dead-letter queue (unless it is one); every suppression says why."""
    findings: list[Finding] = []

    def add(logical_id: str, problems: Iterable[tuple[str, str]]) -> None:
        findings.extend(Finding(name, logical_id, m, "mrictl", r) for r, m in problems)

    add("", _suppression_findings(template.get("Metadata")))
    for logical_id, resource in template.get("Resources", {}).items():
        if isinstance(resource, dict):
            add(logical_id, _suppression_findings(resource.get("Metadata")))
    for logical_id, bucket in _resources_of_type(template, "AWS::S3::Bucket").items():
        add(logical_id, _bucket_findings(logical_id, bucket, template))
    queues = _resources_of_type(template, "AWS::SQS::Queue")
    for logical_id, queue in queues.items():
        add(logical_id, _queue_findings(logical_id, queue, queues))
    return findings


def check_templates(paths: Iterable[Path]) -> list[Finding]:
    """Our rules over template files; a file that cannot be read is a finding too."""
    findings: list[Finding] = []
    for path in paths:
        try:
            template = load_template(path)
        except TemplateError as error:
            findings.append(Finding(path.name, "", str(error), "mrictl", "template"))
            continue
        findings.extend(check_template(path.name, template))
    return findings


# --- The checkers --------------------------------------------------------------------------


def find_cfn_lint() -> str | None:
    """cfn-lint of this Python's venv, else one on PATH."""
    beside = Path(sys.executable).with_name("cfn-lint")
    return str(beside) if beside.is_file() else shutil.which("cfn-lint")


def find_checkov(
    environ: Mapping[str, str] = os.environ, repository: Path = REPOSITORY
) -> str | None:
    """$MRICTL_CHECKOV, else the repository's .venv-checkov, else one on PATH."""
    given = environ.get("MRICTL_CHECKOV")
    if given:
        return given if Path(given).is_file() else None
    own_venv = repository / ".venv-checkov" / "bin" / "checkov"
    return str(own_venv) if own_venv.is_file() else shutil.which("checkov")


def cfn_lint_command(cfn_lint: str, paths: Iterable[Path]) -> list[str]:
    return [cfn_lint, "--format", "json", "--", *map(str, paths)]


def checkov_command(checkov: str, paths: Iterable[Path]) -> list[str]:
    # --skip-download (with BC_SKIP_MAPPING) keeps it offline: no policy download, no traceback.
    command = [checkov, "--framework", "cloudformation", "--skip-download", "--output", "json"]
    return [*command, "--file", *map(str, paths)]


def checkov_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {**environ, "BC_SKIP_MAPPING": "TRUE"}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def cfn_lint_findings(report: str) -> list[Finding]:
    """cfn-lint's JSON report (--format json) as findings."""
    findings = []
    for match in json.loads(report or "[]"):
        path = match.get("Location", {}).get("Path") or []
        resource = str(path[1]) if len(path) > 1 and path[0] == "Resources" else ""
        line = match.get("Location", {}).get("Start", {}).get("LineNumber")
        message = _one_line(match.get("Message", ""))
        findings.append(
            Finding(
                template=Path(match.get("Filename", "?")).name,
                resource=resource,
                message=f"line {line}: {message}" if line else message,
                checker="cfn-lint",
                rule=str(match.get("Rule", {}).get("Id", "?")),
            )
        )
    return findings


def checkov_findings(report: str) -> list[Finding]:
    """checkov's JSON report (--output json) as findings: failed checks, files it could not
    parse, and skips without a reason."""
    data = json.loads(report) if report.strip() else []
    findings = []
    for document in _as_list(data):
        results = document.get("results", {}) if isinstance(document, dict) else {}
        for check in results.get("failed_checks", []):
            findings.append(_checkov_finding(check, _one_line(check.get("check_name", ""))))
        for check in results.get("skipped_checks", []):
            comment = (check.get("check_result") or {}).get("suppress_comment") or ""
            if not comment.strip() or comment.strip() == "No comment provided":
                findings.append(_checkov_finding(check, "skipped without a written reason"))
        for path in results.get("parsing_errors", []):
            findings.append(
                Finding(Path(path).name, "", "checkov could not parse it", "checkov", "parse")
            )
    return findings


def _checkov_finding(check: Mapping[str, Any], message: str) -> Finding:
    resource = str(check.get("resource", ""))
    return Finding(
        template=Path(check.get("file_abs_path") or check.get("file_path") or "?").name,
        resource=resource.split(".", 1)[1] if "." in resource else resource,
        message=message,
        checker="checkov",
        rule=str(check.get("check_id", "?")),
    )


def _finish(
    name: str, process: subprocess.Popen[str], parse: Callable[[str], list[Finding]]
) -> list[Finding]:
    try:
        stdout, stderr = process.communicate(timeout=CHECKER_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        process.kill()
        process.communicate()
        message = f"{name} ran for more than {CHECKER_TIMEOUT_S} s"
        raise MrictlError(message, ExitCode.TIMEOUT) from error
    try:
        return parse(stdout)
    except (ValueError, AttributeError, TypeError) as error:
        last = _one_line(stderr.strip().splitlines()[-1]) if stderr.strip() else "no output"
        message = f"{name} gave no report (exit {process.returncode}): {last}"
        raise MrictlError(message, ExitCode.USAGE) from error


def validate_templates(directory: Path) -> ValidationReport:
    """cfn-lint, checkov and our rules over every template of the folder (the two checkers run
    at once, in their own processes)."""
    paths = template_paths(directory)
    cfn_lint = find_cfn_lint()
    if cfn_lint is None:
        raise MrictlError(f"cfn-lint: not found: {INSTALL_CFN_LINT}", ExitCode.USAGE)
    checkov = find_checkov()
    if checkov is None:
        where = "$MRICTL_CHECKOV names no file" if os.environ.get("MRICTL_CHECKOV") else "not found"
        raise MrictlError(f"checkov: {where}: {INSTALL_CHECKOV}", ExitCode.USAGE)
    _import_yaml()
    options: dict[str, Any] = {
        "stdout": subprocess.PIPE,
        "stderr": subprocess.PIPE,
        "stdin": subprocess.DEVNULL,
        "text": True,
    }
    processes: list[subprocess.Popen[str]] = []
    try:
        processes.append(subprocess.Popen(cfn_lint_command(cfn_lint, paths), **options))
        environment = checkov_environment()
        processes.append(
            subprocess.Popen(checkov_command(checkov, paths), env=environment, **options)
        )
        findings = check_templates(paths)
        findings += _finish("cfn-lint", processes[0], cfn_lint_findings)
        findings += _finish("checkov", processes[1], checkov_findings)
    finally:
        for process in processes:  # a checker left running when the other failed
            if process.poll() is None:
                process.kill()
                process.communicate()
    return ValidationReport(
        templates=[path.name for path in paths],
        checkers=["cfn-lint", "checkov", "mrictl"],
        findings=sorted(findings, key=lambda f: (f.template, f.resource, f.checker, f.rule)),
    )
