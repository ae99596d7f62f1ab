"""The ISMRMRD XML header: what we read from it and how we write it.

fastMRI files carry it as the `ismrmrd_header` attribute and MRD files as `dataset/xml`. We read
it namespace-agnostically with ElementTree (real headers from converters often carry elements
the strict schema parser refuses) and write it through the `ismrmrd` package's schema classes,
so that what we write validates against the ISMRMRD schema.

Identifiers are kept in DICOM form (dates YYYYMMDD, times HHMMSS.FFFFFF, sex M/F/O). A value
that the schema's typed element cannot hold (a partial date, a non-numeric accession number) is
written as a `userParameterString` named after the DICOM keyword, and read back from there.
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

import ismrmrd.xsd as xsd
from xsdata.models.datatype import XmlDate, XmlTime

from raki.scan import Identifiers, Scan

# A header is a few kB; anything far larger is not a header we should parse.
MAX_HEADER_BYTES = 16 * 1024 * 1024

# DICOM keyword under which a value travels when its typed schema element cannot hold it.
_FALLBACK_KEYWORDS = {
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "accession_number": "AccessionNumber",
}
_SLICE_THICKNESS_PARAMETER = "SliceThickness"

_DICOM_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DICOM_TIME = re.compile(r"^(\d{2})(\d{2})(\d{2})(?:\.(\d{1,6}))?$")
_XML_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_XML_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?")


@dataclass(frozen=True)
class HeaderInfo:
    """What an ISMRMRD header says about the first encoding and the people involved."""

    matrix: tuple[int, int, int] | None = None
    recon_matrix: tuple[int, int, int] | None = None
    fov_mm: tuple[float, float, float] | None = None
    slice_thickness_mm: float | None = None
    ky_limits: tuple[int, int, int] | None = None  # (minimum, maximum, center)
    acceleration: int | None = None
    trajectory: str | None = None
    protocol: str = ""
    identifiers: Identifiers = field(default_factory=Identifiers)

    @property
    def readout_oversampling(self) -> float | None:
        """Encoded over recon readout points when the encoded readout is the longer one."""
        if self.matrix is None or self.recon_matrix is None or self.recon_matrix[0] <= 0:
            return None
        ratio = self.matrix[0] / self.recon_matrix[0]
        return ratio if ratio > 1.0 else None


def parse_ismrmrd_header(document: str | bytes) -> HeaderInfo:
    """Read the fields we use; ValueError ("is not valid XML ...") for a broken header."""
    if len(document) > MAX_HEADER_BYTES:
        raise ValueError(f"is implausibly large ({len(document)} bytes)")
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise ValueError(f"is not valid XML ({exc})") from None
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    if root.tag != "ismrmrdHeader":
        raise ValueError(f"has the root <{root.tag}>, not <ismrmrdHeader>")

    encoding = root.find("encoding")
    matrix = recon_matrix = fov = ky_limits = None
    acceleration = trajectory = None
    if encoding is not None:
        matrix = _ints(encoding.find("encodedSpace/matrixSize"), ("x", "y", "z"))
        fov = _floats(encoding.find("encodedSpace/fieldOfView_mm"), ("x", "y", "z"))
        recon_matrix = _ints(encoding.find("reconSpace/matrixSize"), ("x", "y", "z"))
        ky_limits = _ints(
            encoding.find("encodingLimits/kspace_encoding_step_1"),
            ("minimum", "maximum", "center"),
        )
        acceleration = _int(
            encoding.find("parallelImaging/accelerationFactor/kspace_encoding_step_1")
        )
        trajectory = _text(encoding.find("trajectory"))

    user_strings = _user_parameters(root, "userParameterString")
    user_doubles = _user_parameters(root, "userParameterDouble")
    thickness = _float_or_none(user_doubles.get(_SLICE_THICKNESS_PARAMETER))
    if thickness is None and fov is not None and (matrix is None or matrix[2] <= 1):
        thickness = fov[2] if fov[2] > 0 else None
    if fov is not None and (fov[0] <= 0 or fov[1] <= 0):
        fov = None  # a zero FOV is how writers (and we) say "unknown"

    return HeaderInfo(
        matrix=matrix,
        recon_matrix=recon_matrix,
        fov_mm=fov,
        slice_thickness_mm=thickness,
        ky_limits=ky_limits,
        acceleration=acceleration if acceleration and acceleration >= 1 else None,
        trajectory=trajectory,
        protocol=_text(root.find("measurementInformation/protocolName")) or "",
        identifiers=_identifiers(root, user_strings),
    )


def _recon_space(space: xsd.encodingSpaceType, oversampling: float | None):
    """The encoded space less the readout oversampling (the same space when there is none)."""
    if not oversampling or oversampling <= 1.0:
        return dataclasses.replace(space)
    return xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(
            x=round(space.matrixSize.x / oversampling), y=space.matrixSize.y, z=1
        ),
        fieldOfView_mm=xsd.fieldOfViewMm(
            x=space.fieldOfView_mm.x / oversampling,
            y=space.fieldOfView_mm.y,
            z=space.fieldOfView_mm.z,
        ),
    )


def build_ismrmrd_header(scan: Scan) -> str:
    """A schema-valid ISMRMRD header for a Cartesian 2D multi-slice scan, as UTF-8 XML text.

    Unknown geometry is written as a zero FOV; the Larmor frequency, which a Scan does not
    carry, as 0 Hz.
    """
    nx, ny = scan.matrix
    geometry = scan.geometry
    fov = geometry.fov_mm or (0.0, 0.0, geometry.slice_thickness_mm or 0.0)
    space = xsd.encodingSpaceType(
        matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=1),
        fieldOfView_mm=xsd.fieldOfViewMm(x=float(fov[0]), y=float(fov[1]), z=float(fov[2])),
    )
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_0=xsd.limitType(minimum=0, maximum=nx - 1, center=nx // 2),
        kspace_encoding_step_1=xsd.limitType(minimum=0, maximum=ny - 1, center=ny // 2),
        kspace_encoding_step_2=xsd.limitType(minimum=0, maximum=0, center=0),
        average=xsd.limitType(),
        slice=xsd.limitType(minimum=0, maximum=scan.num_slices - 1, center=0),
        contrast=xsd.limitType(),
        phase=xsd.limitType(),
        repetition=xsd.limitType(),
        set=xsd.limitType(),
        segment=xsd.limitType(),
    )
    parallel = None
    if scan.acceleration > 1:
        parallel = xsd.parallelImagingType(
            accelerationFactor=xsd.accelerationFactorType(
                kspace_encoding_step_1=scan.acceleration, kspace_encoding_step_2=1
            ),
            calibrationMode=xsd.calibrationModeType.EMBEDDED if scan.acs else None,
        )
    encoding = xsd.encodingType(
        encodedSpace=space,
        reconSpace=_recon_space(space, geometry.readout_oversampling),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
        parallelImaging=parallel,
    )

    ids = scan.identifiers
    fallback: dict[str, str] = {}
    subject = xsd.subjectInformationType(
        patientName=ids.patient_name,
        patientID=ids.patient_id,
        patientBirthdate=_typed_or_fallback(
            ids, "patient_birth_date", _xml_date(ids.patient_birth_date), fallback
        ),
        patientGender=_typed_or_fallback(
            ids,
            "patient_sex",
            ids.patient_sex if ids.patient_sex in ("M", "F", "O") else None,
            fallback,
        ),
    )
    accession = ids.accession_number
    study = xsd.studyInformationType(
        studyDate=_typed_or_fallback(ids, "study_date", _xml_date(ids.study_date), fallback),
        studyTime=_typed_or_fallback(ids, "study_time", _xml_time(ids.study_time), fallback),
        accessionNumber=_typed_or_fallback(
            ids,
            "accession_number",
            int(accession) if accession and re.fullmatch(r"[1-9]\d{0,17}", accession) else None,
            fallback,
        ),
        studyDescription=ids.study_description,
        studyInstanceUID=ids.study_instance_uid,
    )
    system = xsd.acquisitionSystemInformationType(
        receiverChannels=scan.num_coils, institutionName=ids.institution_name
    )
    measurement = None
    if scan.protocol:
        measurement = xsd.measurementInformationType(
            protocolName=scan.protocol, patientPosition=xsd.patientPositionType.HFS
        )

    user = xsd.userParametersType(
        userParameterString=[
            xsd.userParameterStringType(name=name, value=value) for name, value in fallback.items()
        ]
    )
    if geometry.slice_thickness_mm is not None and geometry.slice_thickness_mm != fov[2]:
        user.userParameterDouble.append(
            xsd.userParameterDoubleType(
                name=_SLICE_THICKNESS_PARAMETER, value=float(geometry.slice_thickness_mm)
            )
        )
    has_user = bool(user.userParameterString or user.userParameterDouble)
    header = xsd.ismrmrdHeader(
        version=2,
        subjectInformation=subject if _any_set(subject) else None,
        studyInformation=study if _any_set(study) else None,
        measurementInformation=measurement,
        acquisitionSystemInformation=system,
        experimentalConditions=xsd.experimentalConditionsType(H1resonanceFrequency_Hz=0),
        encoding=[encoding],
        userParameters=user if has_user else None,
    )
    return xsd.ToXML(header, encoding="utf-8")


def _typed_or_fallback(
    ids: Identifiers, name: str, typed: object, fallback: dict[str, str]
) -> object:
    value = getattr(ids, name)
    if value is not None and typed is None:
        fallback[_FALLBACK_KEYWORDS[name]] = value
    return typed


def _any_set(record: object) -> bool:
    return any(value not in (None, [], "") for value in dataclasses.asdict(record).values())


def _identifiers(root: ElementTree.Element, user_strings: dict[str, str]) -> Identifiers:
    subject = root.find("subjectInformation")
    study = root.find("studyInformation")

    def subject_text(tag: str) -> str | None:
        return _text(subject.find(tag)) if subject is not None else None

    def study_text(tag: str) -> str | None:
        return _text(study.find(tag)) if study is not None else None

    def with_fallback(name: str, value: str | None) -> str | None:
        return value if value is not None else user_strings.get(_FALLBACK_KEYWORDS[name])

    return Identifiers(
        patient_name=subject_text("patientName"),
        patient_id=subject_text("patientID"),
        patient_birth_date=with_fallback(
            "patient_birth_date", _dicom_date(subject_text("patientBirthdate"))
        ),
        patient_sex=with_fallback("patient_sex", subject_text("patientGender")),
        study_instance_uid=study_text("studyInstanceUID"),
        study_date=with_fallback("study_date", _dicom_date(study_text("studyDate"))),
        study_time=with_fallback("study_time", _dicom_time(study_text("studyTime"))),
        study_description=study_text("studyDescription"),
        accession_number=with_fallback("accession_number", study_text("accessionNumber")),
        institution_name=_text(root.find("acquisitionSystemInformation/institutionName")),
    )


def _user_parameters(root: ElementTree.Element, kind: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for parameter in root.findall(f"userParameters/{kind}"):
        name, value = _text(parameter.find("name")), _text(parameter.find("value"))
        if name is not None and value is not None:
            found.setdefault(name, value)
    return found


def _text(element: ElementTree.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    text = element.text.strip()
    return text or None


def _int(element: ElementTree.Element | None) -> int | None:
    text = _text(element)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _ints(element: ElementTree.Element | None, tags: tuple[str, ...]) -> tuple[int, ...] | None:
    if element is None:
        return None
    values = [_int(element.find(tag)) for tag in tags]
    return None if any(value is None for value in values) else tuple(values)  # type: ignore[return-value]


def _floats(element: ElementTree.Element | None, tags: tuple[str, ...]) -> tuple[float, ...] | None:
    if element is None:
        return None
    values = [_float_or_none(_text(element.find(tag))) for tag in tags]
    return None if any(value is None for value in values) else tuple(values)  # type: ignore[return-value]


def _xml_date(value: str | None) -> XmlDate | None:
    match = _DICOM_DATE.match(value or "")
    if not match:
        return None
    try:
        return XmlDate(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _xml_time(value: str | None) -> XmlTime | None:
    match = _DICOM_TIME.match(value or "")
    if not match:
        return None
    hour, minute, second, fraction = match.groups()
    nanoseconds = int(fraction.ljust(9, "0")) if fraction else 0
    try:
        return XmlTime(int(hour), int(minute), int(second), nanoseconds)
    except ValueError:
        return None


def _dicom_date(text: str | None) -> str | None:
    if text is None:
        return None
    match = _XML_DATE.match(text)
    return "".join(match.groups()) if match else text


def _dicom_time(text: str | None) -> str | None:
    if text is None:
        return None
    match = _XML_TIME.match(text)
    if not match:
        return text
    hour, minute, second, fraction = match.groups()
    fraction = (fraction or "")[:6].rstrip("0")
    return f"{hour}{minute}{second}" + (f".{fraction}" if fraction else "")
