"""Settings of a body-composition measurement: the tissue HU windows and what is known about the patient.

The HU windows follow Slice-O-Matic, Comp2Comp and most body-composition papers (see BODYCOMP.md):
skeletal muscle -29..+150 HU, intermuscular and subcutaneous fat -190..-30 HU, visceral fat -150..-50 HU.
Many studies use -190..-30 HU for visceral fat too, so every window is a setting; whatever was used is
reported with every measurement (:meth:`BodyCompSettings.as_dict`).

Patient height, weight, sex and age come from the DICOM header (PatientSize in metres, PatientWeight in kg,
PatientSex, PatientAge such as ``065Y``) unless the user gives them; values outside plausible human ranges
are refused with a message that says what unit was expected, because a height of 178 "metres" would
silently turn every skeletal muscle index into nonsense.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..errors import MSKSegError

#: Plausible adult ranges (the cut-offs are published for adults); values outside them are almost always a unit
#: mistake or a wrong header (a height of 0.5 m is not an adult patient).
HEIGHT_RANGE_M = (1.0, 2.5)
WEIGHT_RANGE_KG = (25.0, 350.0)
AGE_RANGE_YEARS = (0.0, 130.0)

#: The visceral fat window many studies use instead of the default -150..-50 HU.
VAT_HU_WIDE = (-190.0, -30.0)


@dataclass(frozen=True)
class BodyCompSettings:
    """Hounsfield windows (inclusive at both ends) that decide which labelled pixels count as which tissue.

    Args:
        muscle_hu: skeletal muscle window (default -29..150 HU).
        imat_hu: intermuscular adipose tissue window (default -190..-30 HU); muscle-labelled pixels in this
            window are counted as IMAT, not muscle (Comp2Comp convention).
        sat_hu: subcutaneous adipose tissue window (default -190..-30 HU).
        vat_hu: visceral adipose tissue window (default -150..-50 HU; :data:`VAT_HU_WIDE` = -190..-30 HU is
            the common alternative).

    Raises:
        MSKSegError: a window is not two finite numbers with low < high.
    """

    muscle_hu: tuple[float, float] = (-29.0, 150.0)
    imat_hu: tuple[float, float] = (-190.0, -30.0)
    sat_hu: tuple[float, float] = (-190.0, -30.0)
    vat_hu: tuple[float, float] = (-150.0, -50.0)

    def __post_init__(self) -> None:
        for name in ("muscle_hu", "imat_hu", "sat_hu", "vat_hu"):
            window = getattr(self, name)
            try:
                low, high = (float(v) for v in window)
            except (TypeError, ValueError):
                raise MSKSegError(f"HU window {name}={window!r} is not a pair of numbers",
                                  "give it as (low, high), e.g. (-29, 150)") from None
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise MSKSegError(f"HU window {name}=({low:g}, {high:g}) is empty or not finite",
                                  "give the lower bound first, e.g. (-150, -50)")
            object.__setattr__(self, name, (low, high))

    def as_dict(self) -> dict[str, list[float]]:
        """The windows as ``{"muscle_hu": [-29.0, 150.0], ...}`` (JSON-ready), to report with every output."""
        return {name: list(window) for name, window in asdict(self).items()}

    def window_strings(self) -> dict[str, str]:
        """The windows as table cells, e.g. ``{"muscle_window_HU": "-29..150", ...}``."""
        return {name.replace("_hu", "_window_HU"): f"{window[0]:g}..{window[1]:g}"
                for name, window in asdict(self).items()}


#: Short tissue names for the window texts, in the order they are listed.
_WINDOW_NAMES = {"muscle_hu": "skeletal muscle", "imat_hu": "IMAT", "sat_hu": "SAT", "vat_hu": "VAT"}


def _hu(value: float) -> str:
    """``150.0`` -> ``"+150"``, ``-29.0`` -> ``"-29"`` (a window bound as the help texts write it)."""
    return f"{value:+g}" if value > 0 else f"{value:g}"


def describe_windows(settings: BodyCompSettings | None = None, *, muscle_name: str = "skeletal muscle") -> str:
    """The windows as one line of text, tissues with the same window named together.

    Example (the defaults): ``"skeletal muscle -29..+150; IMAT and SAT -190..-30; VAT -150..-50"``.
    Generated from the settings, so the help texts never repeat the numbers.
    """
    settings = settings or BodyCompSettings()
    groups: dict[tuple[float, float], list[str]] = {}
    for name, label in _WINDOW_NAMES.items():
        label = muscle_name if name == "muscle_hu" else label
        groups.setdefault(tuple(getattr(settings, name)), []).append(label)
    return "; ".join(f"{_and(names)} {_hu(lo)}..{_hu(hi)}" for (lo, hi), names in groups.items())


def _and(names: list[str]) -> str:
    """``["IMAT", "SAT", "VAT"]`` -> ``"IMAT, SAT and VAT"``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def windows_help_text() -> str:
    """The tissue-window paragraph of ``mskseg sarcopenia --help`` (plain text, two lines, indented)."""
    wide = f"{_hu(VAT_HU_WIDE[0])},{_hu(VAT_HU_WIDE[1])}"
    return (f"  {describe_windows()} (--vat-window={wide} for the wider one).\n"
            "  Muscle-labelled pixels in the IMAT window count as IMAT.")


def windows_help_html() -> str:
    """The tissue-window paragraph of the SarcopeniaSeg module help (HTML ``<p>``), from the default settings."""
    wide = f"{_hu(VAT_HU_WIDE[0])}..{_hu(VAT_HU_WIDE[1])}"
    return ("<p>Tissue windows (HU, the Slice-O-Matic / Comp2Comp convention, settings reported with every result): "
            f"{describe_windows(muscle_name='muscle')} (or {wide}).</p>")


@dataclass(frozen=True)
class PatientInfo:
    """What is known about the patient; None where unknown.

    Args:
        height_m: height in metres.
        weight_kg: weight in kilograms.
        sex: ``"M"``, ``"F"`` or None.
        age_years: age in years.
        sources: field name -> where the value came from (``"user"``, ``"DICOM PatientSize"``).
        notes: things a reader of the results should know (e.g. an unreadable PatientAge that was ignored).

    Raises:
        MSKSegError: a value outside its plausible range, or a sex other than M/F/None.
    """

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    age_years: float | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "height_m", _checked_height(self.height_m, "height_m"))
        object.__setattr__(self, "weight_kg", _checked_weight(self.weight_kg, "weight_kg"))
        object.__setattr__(self, "sex", _checked_sex(self.sex, "sex"))
        object.__setattr__(self, "age_years", _checked_age(self.age_years, "age_years"))

    @property
    def bmi(self) -> float | None:
        """Body-mass index weight / height^2 (kg/m2), None when height or weight is unknown."""
        if self.height_m is None or self.weight_kg is None:
            return None
        return self.weight_kg / self.height_m ** 2

    def describe(self) -> str:
        """One line for the terminal and the report: each value and where it came from, e.g.
        ``male (DICOM), 1.78 m (DICOM), 82 kg (given), BMI 25.9``, or ``male, 1.78 m, 82 kg, BMI 25.9 (DICOM)``
        when one source gave every value; unknown values are named."""
        def where(name: str) -> str:
            text = self.sources.get(name, "")
            return "given" if text == "user" else "DICOM" if text.startswith("DICOM") else ""

        known = {where(n) for n, v in (("sex", self.sex), ("height_m", self.height_m), ("weight_kg", self.weight_kg))
                 if v is not None}
        one = len(known) == 1  # one source for every known value: named once, at the end

        def source(name: str) -> str:
            return "" if one or not where(name) else f" ({where(name)})"

        parts = [f"{'male' if self.sex == 'M' else 'female'}{source('sex')}" if self.sex else "sex unknown",
                 f"{self.height_m:.2f} m{source('height_m')}" if self.height_m is not None else "height unknown",
                 f"{self.weight_kg:.0f} kg{source('weight_kg')}" if self.weight_kg is not None else "weight unknown"]
        if self.bmi is not None:
            parts.append(f"BMI {self.bmi:.1f}")
        text = ", ".join(parts)
        return f"{text} ({known.pop()})" if one and "" not in known else text

    def as_dict(self) -> dict[str, Any]:
        """Height, weight, sex, age, BMI and the source of each value (JSON-ready)."""
        return {"height_m": self.height_m, "weight_kg": self.weight_kg, "sex": self.sex,
                "age_years": self.age_years, "BMI": self.bmi, "sources": dict(self.sources),
                "notes": list(self.notes)}


def patient_from_metadata(metadata: Mapping[str, Any] | None, height_m: float | None = None,
                          weight_kg: float | None = None, sex: str | None = None,
                          age_years: float | None = None) -> PatientInfo:
    """Patient height, weight, sex and age from DICOM attributes, overridden by values the user gives.

    Reads ``PatientSize`` (metres), ``PatientWeight`` (kg), ``PatientSex`` (``M``/``F``; ``O`` or empty is
    unknown) and ``PatientAge`` (``nnnY``/``M``/``W``/``D``) from ``metadata`` (``Image.metadata``). A
    PatientSize or PatientWeight of 0 or empty means "not recorded", as scanners write it.

    Args:
        metadata: DICOM attributes (may be empty or None).
        height_m, weight_kg, sex, age_years: the user's values; each, when given, replaces the DICOM one.

    Returns:
        A :class:`PatientInfo` whose ``sources`` say where each value came from.

    Raises:
        MSKSegError: a value (the user's or the header's) is outside its plausible range, e.g. a height of
            178 (centimetres where metres are expected) or a sex that is not M/F.
    """
    metadata = metadata or {}
    sources: dict[str, str] = {}
    notes: list[str] = []

    def pick(user_value: Any, key: str, field_name: str, convert) -> Any:
        if user_value is not None and user_value != "":
            sources[field_name] = "user"
            return convert(user_value, field_name)
        raw = metadata.get(key)
        value = convert(raw, f"DICOM {key}", from_header=True)
        if value is not None:
            sources[field_name] = f"DICOM {key}"
        return value

    height = pick(height_m, "PatientSize", "height_m", _checked_height)
    weight = pick(weight_kg, "PatientWeight", "weight_kg", _checked_weight)
    sex_value = pick(sex, "PatientSex", "sex", _checked_sex)
    if age_years is not None and age_years != "":
        age = _checked_age(age_years, "age_years")
        sources["age_years"] = "user"
    else:
        age, note = parse_dicom_age(metadata.get("PatientAge"))
        if note:
            notes.append(note)
        if age is not None:
            sources["age_years"] = "DICOM PatientAge"
    return PatientInfo(height, weight, sex_value, age, sources, tuple(notes))


def parse_dicom_age(value: Any) -> tuple[float | None, str | None]:
    """Age in years from a DICOM Age String (``065Y``, ``018M``, ``003W``, ``012D``).

    Returns:
        ``(age_years, note)``: the age (None when absent or unreadable) and, when the value was unreadable,
        a note saying so (an unreadable age is reported, not fatal: no measurement depends on it).
    """
    if value is None or str(value).strip() == "":
        return None, None
    text = str(value).strip().upper()
    match = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", text)
    if not match:
        return None, f"DICOM PatientAge {value!r} is not an age string like '065Y'; age ignored"
    number = float(match.group(1))
    per_year = {"D": 365.25, "W": 365.25 / 7.0, "M": 12.0, "Y": 1.0, "": 1.0}[match.group(2)]
    age = number / per_year
    if not AGE_RANGE_YEARS[0] <= age <= AGE_RANGE_YEARS[1]:
        return None, f"DICOM PatientAge {value!r} is not a plausible age; age ignored"
    return age, None


# --------------------------------------------------------------------------------------------- validation
def _number(value: Any, what: str) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MSKSegError(f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise MSKSegError(f"{what} {value!r} is not a finite number")
    return number


def _checked_height(value: Any, what: str, from_header: bool = False) -> float | None:
    height = _number(value, what)
    if height is None or (from_header and height <= 0):
        return None
    low, high = HEIGHT_RANGE_M
    if low <= height <= high:
        return height
    where = "fix the DICOM header or give the height yourself" if from_header else "give the height"
    if 100 <= height <= 260:
        hint = f"the height looks like centimetres; {where} in metres, e.g. {height / 100:.2f}"
    elif 1000 <= height <= 2600:
        hint = f"the height looks like millimetres; {where} in metres, e.g. {height / 1000:.2f}"
    else:
        hint = f"{where} in metres ({low:g} to {high:g} m), e.g. 1.72"
    raise MSKSegError(f"{what} {height:g} is not a plausible height in metres", hint)


def _checked_weight(value: Any, what: str, from_header: bool = False) -> float | None:
    weight = _number(value, what)
    if weight is None or (from_header and weight <= 0):
        return None
    low, high = WEIGHT_RANGE_KG
    if low <= weight <= high:
        return weight
    where = "fix the DICOM header or give the weight yourself" if from_header else "give the weight"
    raise MSKSegError(f"{what} {weight:g} is not a plausible weight in kilograms",
                      f"{where} in kilograms ({low:g} to {high:g} kg), e.g. 74.5")


def _checked_age(value: Any, what: str, from_header: bool = False) -> float | None:
    age = _number(value, what)
    if age is None:
        return None
    low, high = AGE_RANGE_YEARS
    if low <= age <= high:
        return age
    raise MSKSegError(f"{what} {age:g} is not a plausible age in years", f"give the age in years ({low:g} to {high:g})")


_SEX_WORDS = {"M": "M", "MALE": "M", "MAN": "M", "F": "F", "FEMALE": "F", "WOMAN": "F"}


def _checked_sex(value: Any, what: str, from_header: bool = False) -> str | None:
    if value is None:
        return None
    text = str(value).strip().upper()
    if text in ("", "O", "U", "UNKNOWN", "OTHER"):
        return None  # the published cut-offs are sex-specific: unknown or other sex leaves the flags undecided
    if text in _SEX_WORDS:
        return _SEX_WORDS[text]
    if from_header:
        return None  # DICOM allows only M, F, O; anything else in a header is noise, not a user's choice
    raise MSKSegError(f"{what} {value!r} is not a sex the cut-offs know",
                      "give 'M' or 'F' (or leave it empty when unknown)")
