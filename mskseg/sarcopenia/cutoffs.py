"""Published cut-offs for low skeletal muscle index (sarcopenia) and low muscle radiodensity.

Offered as named, selectable sets; none is hard-wired (BODYCOMP.md). A flag is True when the value, rounded
to 6 decimals, is strictly below the set's threshold for the patient's sex (and BMI, where the set splits by
BMI), False when at or above it, and None, with a reason, when it cannot be decided: sex unknown, height
unknown (no SMI), weight unknown where the set needs the BMI, no muscle measured, or a set that defines no
such cut-off.

Sources:
    Prado CM et al. Lancet Oncol 2008;9:629-635 (obese patients with solid tumours).
    Martin L et al. J Clin Oncol 2013;31:1539-1547 (cancer patients; SMI and radiodensity split by BMI 25).
    Derstine BA et al. Sci Rep 2018;8:11369 (healthy adults, mean - 2 SD at L3).
    Yoon 2021 (healthy Korean adults, mean - 2 SD).
    Kobayashi / Kamo 2019 (Japanese adults).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from ..errors import MSKSegError
from .settings import PatientInfo


@dataclass(frozen=True)
class BmiSplit:
    """A threshold that depends on the body-mass index: ``below`` when BMI < ``bmi``, else ``at_or_above``."""

    bmi: float
    below: float
    at_or_above: float

    def describe(self) -> str:
        """E.g. ``"< 43 if BMI < 25, < 53 if BMI >= 25"``."""
        return f"< {self.below:g} if BMI < {self.bmi:g}, < {self.at_or_above:g} if BMI >= {self.bmi:g}"


#: A threshold: one number, or one that depends on the BMI.
Threshold = Union[float, BmiSplit]


@dataclass(frozen=True)
class CutoffSet:
    """One published set of cut-offs.

    Args:
        name: the name users choose it by (``"Martin 2013"``).
        population: who it was derived from.
        reference: the citation.
        smi: sex (``"M"``/``"F"``) -> SMI threshold in cm2/m2 (flag when SMI is below it).
        smd: sex -> muscle radiodensity threshold in HU, or None when the set defines none.
    """

    name: str
    population: str
    reference: str
    smi: dict[str, Threshold]
    smd: dict[str, Threshold] | None = None

    def describe(self) -> str:
        """One line for help texts and reports: the thresholds of both sexes."""
        parts = [f"SMI men {_describe(self.smi['M'])}, women {_describe(self.smi['F'])} cm2/m2"]
        if self.smd:
            parts.append(f"SMD men {_describe(self.smd['M'])}, women {_describe(self.smd['F'])} HU")
        return f"{self.name} ({self.population}): " + "; ".join(parts)


def _describe(threshold: Threshold) -> str:
    return threshold.describe() if isinstance(threshold, BmiSplit) else f"< {threshold:g}"


#: Martin 2013's low radiodensity cut-off is the same for men and women.
_MARTIN_SMD = BmiSplit(25.0, 41.0, 33.0)

#: The published sets, by name (exactly as in BODYCOMP.md).
CUTOFF_SETS: dict[str, CutoffSet] = {
    s.name: s
    for s in (
        CutoffSet("Prado 2008", "obese patients with solid tumours",
                  "Prado CM et al., Lancet Oncol 2008;9:629-635",
                  smi={"M": 52.4, "F": 38.5}),
        CutoffSet("Martin 2013", "patients with cancer",
                  "Martin L et al., J Clin Oncol 2013;31:1539-1547",
                  smi={"M": BmiSplit(25.0, 43.0, 53.0), "F": 41.0},
                  smd={"M": _MARTIN_SMD, "F": _MARTIN_SMD}),
        CutoffSet("Derstine 2018", "healthy adults, mean - 2 SD",
                  "Derstine BA et al., Sci Rep 2018;8:11369",
                  smi={"M": 45.4, "F": 34.4}, smd={"M": 38.5, "F": 34.3}),
        CutoffSet("Yoon 2021", "healthy Korean adults, mean - 2 SD",
                  "Yoon et al., 2021",
                  smi={"M": 39.33, "F": 27.77}),
        CutoffSet("Kamo 2019", "Japanese adults (Kobayashi / Kamo)",
                  "Kobayashi et al. / Kamo et al., 2019",
                  smi={"M": 40.31, "F": 30.88}),
    )
}

_SEX_WORD = {"M": "men", "F": "women"}


def get_cutoff_set(name: str) -> CutoffSet:
    """The set called ``name`` (case and surrounding spaces ignored).

    Raises:
        MSKSegError: no set has that name; the message lists the sets there are.
    """
    wanted = str(name).strip().casefold()
    for set_name, cutoff_set in CUTOFF_SETS.items():
        if set_name.casefold() == wanted:
            return cutoff_set
    raise MSKSegError(f"unknown cut-off set {name!r}", f"choose one of {', '.join(repr(n) for n in CUTOFF_SETS)}")


def classify(smi: float | None, smd: float | None, patient: PatientInfo, set_name: str) -> dict[str, Any]:
    """Sarcopenia (low SMI) and low muscle radiodensity flags by one cut-off set.

    Args:
        smi: skeletal muscle index in cm2/m2 (None when height is unknown or no muscle was measured).
        smd: skeletal muscle radiodensity, mean HU (None when no muscle was measured).
        patient: sex, height and weight (BMI) of the patient.
        set_name: a key of :data:`CUTOFF_SETS`.

    Returns:
        ``{"cutoff_set", "sarcopenia", "sarcopenia_SMI_threshold", "sarcopenia_rule", "sarcopenia_reason",
        "low_radiodensity", "low_radiodensity_SMD_threshold_HU", "low_radiodensity_rule",
        "low_radiodensity_reason"}``. Each flag is True/False, or None when undecided; its threshold is the
        number used (None when none could be chosen); its rule says which threshold applied and why (e.g.
        ``"SMI < 43 cm2/m2 (Martin 2013, men, BMI < 25)"``); its reason says why it is undecided (None when
        decided).

    Raises:
        MSKSegError: unknown set name.
    """
    cutoff_set = get_cutoff_set(set_name)
    sarcopenia = _flag(cutoff_set, cutoff_set.smi, "SMI", "cm2/m2", smi, patient,
                       missing_value=_missing_smi_reason(patient))
    if cutoff_set.smd is None:
        radiodensity = (None, None, None, f"{cutoff_set.name} defines no muscle radiodensity cut-off")
    else:
        radiodensity = _flag(cutoff_set, cutoff_set.smd, "SMD", "HU", smd, patient,
                             missing_value="no skeletal muscle measured (no SMD)")
    return {
        "cutoff_set": cutoff_set.name,
        "sarcopenia": sarcopenia[0],
        "sarcopenia_SMI_threshold": sarcopenia[1],
        "sarcopenia_rule": sarcopenia[2],
        "sarcopenia_reason": sarcopenia[3],
        "low_radiodensity": radiodensity[0],
        "low_radiodensity_SMD_threshold_HU": radiodensity[1],
        "low_radiodensity_rule": radiodensity[2],
        "low_radiodensity_reason": radiodensity[3],
    }


def classify_all(smi: float | None, smd: float | None, patient: PatientInfo) -> dict[str, dict[str, Any]]:
    """:func:`classify` by every set of :data:`CUTOFF_SETS`, keyed by set name."""
    return {name: classify(smi, smd, patient, name) for name in CUTOFF_SETS}


def _missing_smi_reason(patient: PatientInfo) -> str:
    if patient.height_m is None:
        return "height unknown: give the patient's height in metres to compute the SMI"
    return "no skeletal muscle measured (no SMI)"


def _flag(cutoff_set: CutoffSet, thresholds: dict[str, Threshold], measure: str, unit: str,
          value: float | None, patient: PatientInfo, missing_value: str
          ) -> tuple[bool | None, float | None, str | None, str | None]:
    """``(flag, threshold, rule, reason)`` for one measure; see :func:`classify`."""
    reasons: list[str] = []
    threshold: float | None = None
    rule: str | None = None
    sex_thresholds = set(map(_key, thresholds.values()))
    if patient.sex is None and len(sex_thresholds) > 1:
        reasons.append(f"sex unknown: {cutoff_set.name} {measure} cut-offs differ for men and women")
    else:
        sex = patient.sex or "M"  # the same threshold for both sexes (Martin 2013 radiodensity)
        chosen = thresholds[sex]
        who = _SEX_WORD[sex] if len(sex_thresholds) > 1 else "both sexes"
        if isinstance(chosen, BmiSplit):
            bmi = patient.bmi
            if bmi is None:
                missing = "weight" if patient.height_m is not None else "height"
                if patient.height_m is None and patient.weight_kg is None:
                    missing = "height and weight"
                reasons.append(f"BMI needed for {cutoff_set.name} {measure} ({who}) but {missing} unknown")
            else:
                low_bmi = _rounded(bmi) < chosen.bmi
                threshold = chosen.below if low_bmi else chosen.at_or_above
                split = f"BMI < {chosen.bmi:g}" if low_bmi else f"BMI >= {chosen.bmi:g}"
                rule = f"{measure} < {threshold:g} {unit} ({cutoff_set.name}, {who}, {split})"
        else:
            threshold = float(chosen)
            rule = f"{measure} < {threshold:g} {unit} ({cutoff_set.name}, {who})"
    if value is None:
        reasons.append(missing_value)
    if reasons:
        return None, threshold, rule, "; ".join(reasons)
    assert threshold is not None and value is not None
    return bool(_rounded(value) < threshold), threshold, rule, None


def _rounded(value: float) -> float:
    """``value`` rounded to 6 decimals before it meets a cut-off: 64 kg / (1.60 m)^2 is 25.0 to a clinician,
    not the 24.999999999999996 that binary floating point gives, and must fall on the same side of BMI 25."""
    return round(float(value), 6)


def _key(threshold: Threshold) -> Any:
    return (threshold.bmi, threshold.below, threshold.at_or_above) if isinstance(threshold, BmiSplit) else threshold
