"""Class name -> SNOMED CT codes, display name and colour: the one table every writer and module uses.

A class name (``skeletal_muscle``, ``vertebrae_L3``) is the stable key used in model cards, label-map
dictionaries and file names. From this table come:

* Slicer segment names, colours and the ``TerminologyEntry`` tag (:func:`slicer_terminology_entry`),
* DICOM-SEG ``SegmentedPropertyCategory/TypeCodeSequence`` (:func:`get_class`),
* the Slicer terminology file ``Resources/MSKSeg.term.json`` (:func:`write_slicer_term_json`).

Names not in the table (a user's own label map) still work: they get the generic "Tissue" category, a
type named after the class with a private code, and a colour from a fixed palette.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .anatomy import totalseg_name, vertebra, vertebra_names

Code = tuple[str, str, str]  # (coding scheme designator, code value, code meaning)

TISSUE: Code = ("SCT", "85756007", "Tissue")
ANATOMY: Code = ("SCT", "123037004", "Anatomical Structure")
RIGHT: Code = ("SCT", "24028007", "Right")
LEFT: Code = ("SCT", "7771000", "Left")

#: Context name of MSKSeg's own terminology in Slicer (the ``.term.json`` written below).
CONTEXT_NAME = "Segmentation category and type - MSKSeg"
ANATOMIC_CONTEXT_NAME = "Anatomic codes - DICOM master list"
#: Private coding scheme for classes without a SNOMED CT code (DICOM allows local schemes "99...").
PRIVATE_SCHEME = "99MSKSEG"


@dataclass(frozen=True)
class SegmentClass:
    """One segmentable class: its key, the name users see, its codes and its display colour."""

    name: str
    display_name: str
    category: Code
    type: Code
    color: tuple[int, int, int]
    type_modifier: Code | None = None

    @property
    def color_float(self) -> tuple[float, float, float]:
        """Colour as RGB floats in 0..1 (Slicer's convention)."""
        return tuple(c / 255.0 for c in self.color)  # type: ignore[return-value]


def _c(name, display, category, type_code, color, modifier=None) -> SegmentClass:
    return SegmentClass(name, display, category, type_code, tuple(color), modifier)


#: SNOMED CT code of each vertebra (the names and their order come from :mod:`mskseg.anatomy`).
_VERTEBRA_CODES = {
    "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003",
    "C6": "36054005", "C7": "87391001", "T1": "64864005", "T2": "53733008", "T3": "1626008",
    "T4": "73071006", "T5": "56401006", "T6": "45296009", "T7": "62487009", "T8": "11068009",
    "T9": "82687006", "T10": "7610001", "T11": "12989004", "T12": "23215003", "L1": "66794005",
    "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
}
_RIB_CODES = ["48535007", "78247007", "25888004", "25523003", "15339008", "59558009", "24915002",
              "5953002", "22565002", "77644006", "58830002", "43993008"]
_RIB_WORDS = ["First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth",
              "Tenth", "Eleventh", "Twelfth"]


def _vertebra_color(level: str) -> tuple[int, int, int]:
    # Cervical blue-ish, thoracic green-ish, lumbar warm: neighbours always differ.
    row = vertebra(level)
    n = row.number
    base = {"cervical": (110, 160, 230), "thoracic": (120, 200, 140), "lumbar": (240, 190, 90)}[row.region]
    shift = (n % 3) * 30
    return (min(255, base[0] + shift), max(0, base[1] - shift // 2), min(255, base[2] + shift // 3))


def _build_table() -> dict[str, SegmentClass]:
    t: list[SegmentClass] = [
        # Body composition (BODYCOMP.md)
        _c("skeletal_muscle", "Skeletal muscle", TISSUE, ("SCT", "127954009", "Skeletal muscle"), (192, 104, 88)),
        _c("subcutaneous_fat", "Subcutaneous adipose tissue", TISSUE, ("SCT", "67769002", "Subcutaneous fatty tissue"), (240, 220, 90)),
        _c("visceral_fat", "Visceral adipose tissue", TISSUE, ("SCT", "55603005", "Fat"), (255, 150, 40)),
        _c("intermuscular_fat", "Intermuscular adipose tissue", TISSUE, ("SCT", "55603005", "Fat"), (130, 210, 200)),
        # Muscle groups at L3
        _c("psoas", "Psoas muscle", ANATOMY, ("SCT", "68455001", "Iliopsoas muscle"), (205, 75, 75)),
        _c("paraspinal", "Paraspinal muscles", ANATOMY, ("SCT", "44947003", "Erector spinae muscle"), (170, 60, 110)),
        _c("abdominal_wall", "Abdominal wall muscles", ANATOMY, ("SCT", "1142228004", "Abdominal wall muscle"), (225, 130, 90)),
        # Bones
        _c("sacrum", "Sacrum", ANATOMY, ("SCT", "54735007", "Sacrum"), (250, 220, 170)),
        _c("hip_left", "Left hip bone", ANATOMY, ("SCT", "29836001", "Hip"), (200, 160, 200), LEFT),
        _c("hip_right", "Right hip bone", ANATOMY, ("SCT", "29836001", "Hip"), (160, 120, 200), RIGHT),
        _c("femur_left", "Left femur", ANATOMY, ("SCT", "71341001", "Femur"), (180, 210, 250), LEFT),
        _c("femur_right", "Right femur", ANATOMY, ("SCT", "71341001", "Femur"), (120, 170, 240), RIGHT),
        # Bone classes the rules name when they cannot tell single bones apart
        _c("bone", "Bone", ANATOMY, ("SCT", "272673000", "Bone"), (241, 214, 145)),
        _c("other_bone", "Other bone", ANATOMY, ("SCT", "272673000", "Bone"), (200, 200, 200)),
        _c("vertebrae", "Vertebrae (level not identified)", ANATOMY, ("SCT", "44300000", "Vertebral column"),
           (230, 170, 110)),
        _c("ribs_left", "Left ribs", ANATOMY, ("SCT", "113197003", "Rib"), (120, 220, 230), LEFT),
        _c("ribs_right", "Right ribs", ANATOMY, ("SCT", "113197003", "Rib"), (70, 180, 90), RIGHT),
        _c("sternum", "Sternum", ANATOMY, ("SCT", "56873002", "Sternum"), (230, 200, 140)),
        _c("costal_cartilage", "Costal cartilage", ANATOMY, ("SCT", "50016007", "Costal cartilage"), (160, 220, 220)),
        _c("humerus_left", "Left humerus", ANATOMY, ("SCT", "85050009", "Humerus"), (210, 180, 150), LEFT),
        _c("humerus_right", "Right humerus", ANATOMY, ("SCT", "85050009", "Humerus"), (190, 160, 130), RIGHT),
        _c("scapula_left", "Left scapula", ANATOMY, ("SCT", "79601000", "Scapula"), (190, 210, 160), LEFT),
        _c("scapula_right", "Right scapula", ANATOMY, ("SCT", "79601000", "Scapula"), (170, 190, 140), RIGHT),
        _c("clavicula_left", "Left clavicle", ANATOMY, ("SCT", "51299004", "Clavicle"), (220, 190, 220), LEFT),
        _c("clavicula_right", "Right clavicle", ANATOMY, ("SCT", "51299004", "Clavicle"), (200, 170, 200), RIGHT),
        # Organs used by the tasks as context
        _c("liver", "Liver", ANATOMY, ("SCT", "10200004", "Liver"), (221, 130, 101)),
        _c("spleen", "Spleen", ANATOMY, ("SCT", "78961009", "Spleen"), (157, 108, 162)),
        _c("kidney_left", "Left kidney", ANATOMY, ("SCT", "64033007", "Kidney"), (185, 102, 83), LEFT),
        _c("kidney_right", "Right kidney", ANATOMY, ("SCT", "64033007", "Kidney"), (185, 102, 83), RIGHT),
        _c("aorta", "Aorta", ANATOMY, ("SCT", "15825003", "Aorta"), (224, 97, 76)),
        _c("inferior_vena_cava", "Inferior vena cava", ANATOMY, ("SCT", "64131007", "Inferior vena cava"), (0, 151, 206)),
        _c("spinal_cord", "Spinal cord", ANATOMY, ("SCT", "2748008", "Spinal cord"), (244, 214, 49)),
    ]
    for level in vertebra_names("C1", "L5"):
        t.append(_c(totalseg_name(level), f"{level} vertebra", ANATOMY,
                    ("SCT", _VERTEBRA_CODES[level], f"{level} vertebra"), _vertebra_color(level)))
    for i, (code, word) in enumerate(zip(_RIB_CODES, _RIB_WORDS), start=1):
        for side, mod, col in (("left", LEFT, (235, 200, 160)), ("right", RIGHT, (215, 180, 140))):
            shade = (i % 4) * 8
            t.append(_c(f"rib_{side}_{i}", f"{side.capitalize()} rib {i}", ANATOMY, ("SCT", code, f"{word} rib"),
                        (col[0] - shade, col[1] - shade, col[2]), mod))
    return {c.name: c for c in t}


CLASSES: dict[str, SegmentClass] = _build_table()

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]


def get_class(name: str) -> SegmentClass:
    """The :class:`SegmentClass` of ``name``; unknown names get a generic tissue entry with a palette colour."""
    if name in CLASSES:
        return CLASSES[name]
    colour = _PALETTE[sum(name.encode()) % len(_PALETTE)]
    code = "".join(ch for ch in name.upper() if ch.isalnum())[:16] or "UNKNOWN"
    return SegmentClass(name, name.replace("_", " "), TISSUE, (PRIVATE_SCHEME, code, name.replace("_", " ")), colour)


def slicer_terminology_entry(name: str) -> str:
    """The string Slicer stores in a segment's ``TerminologyEntry`` tag for class ``name``.

    Format (Slicer's developer guide, "TerminologyEntry tag"):
    ``context~category~type~typeModifier~anatomicContext~anatomicRegion~anatomicRegionModifier``,
    each code written ``scheme^value^meaning``.
    """
    c = get_class(name)
    mod = "^".join(c.type_modifier) if c.type_modifier else "^^"
    return "~".join([CONTEXT_NAME, "^".join(c.category), "^".join(c.type), mod, ANATOMIC_CONTEXT_NAME, "^^", "^^"])


def parse_terminology_entry(entry: str) -> dict[str, Code | str | None]:
    """Split a Slicer ``TerminologyEntry`` string into context, category, type and type modifier codes."""
    parts = entry.split("~")
    parts += [""] * (7 - len(parts))

    def code(s: str) -> Code | None:
        f = (s.split("^") + ["", "", ""])[:3]
        return tuple(f) if any(f) else None  # type: ignore[return-value]

    return {"context": parts[0], "category": code(parts[1]), "type": code(parts[2]), "type_modifier": code(parts[3])}


def slicer_term_json(names: list[str] | None = None) -> dict:
    """A Slicer terminology context (``.term.json`` content) holding ``names`` (default: every class)."""
    categories: dict[Code, list[dict]] = {}
    for name in names or list(CLASSES):
        c = get_class(name)
        entry = {
            "CodingSchemeDesignator": c.type[0], "CodeValue": c.type[1], "CodeMeaning": c.type[2],
            "recommendedDisplayRGBValue": list(c.color), "3dSlicerLabel": c.display_name,
            "cid": "", "UMLSConceptUID": "", "contextGroupName": "MSKSeg",
        }
        if c.type_modifier:
            entry["HasModifiers"] = "true"
            entry["Modifier"] = [{
                "CodingSchemeDesignator": c.type_modifier[0], "CodeValue": c.type_modifier[1],
                "CodeMeaning": c.type_modifier[2], "recommendedDisplayRGBValue": list(c.color),
                "3dSlicerLabel": c.display_name,
            }]
        types = categories.setdefault(c.category, [])
        if not any(t["CodeValue"] == entry["CodeValue"] and t["CodingSchemeDesignator"] == entry["CodingSchemeDesignator"]
                   for t in types):
            types.append(entry)
        elif c.type_modifier:
            t = next(t for t in types if t["CodeValue"] == entry["CodeValue"])
            t.setdefault("Modifier", []).extend(entry.get("Modifier", []))
            t["HasModifiers"] = "true"
    return {
        "SegmentationCategoryTypeContextName": CONTEXT_NAME,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {
            "Category": [
                {"CodingSchemeDesignator": cat[0], "CodeValue": cat[1], "CodeMeaning": cat[2], "showAnatomy": "false",
                 "Type": types}
                for cat, types in categories.items()
            ]
        },
    }


def write_slicer_term_json(path: str | Path, names: list[str] | None = None) -> Path:
    """Write :func:`slicer_term_json` to ``path`` (the modules load it with Slicer's Terminologies logic)."""
    path = Path(path)
    path.write_text(json.dumps(slicer_term_json(names), indent=2) + "\n")
    return path
