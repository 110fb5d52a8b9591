"""What the simulated TechCare Report service writes: a radiology report per study, EN or FR.

It is derived from the same deterministic findings as GET /v3/smarturgences, so the report
and the findings of a study agree.
"""

from __future__ import annotations

from typing import Any

from pacsor.devtools.simulator.results import InputInstance, smarturgences_findings

_TEXT = {
    "en": {
        "title": "Chest radiograph",
        "indication": "Chest pain after a fall. Rule out fracture and effusion.",
        "technique": "{n} radiograph(s) of the chest, frontal and lateral views when available.",
        "abnormal": "{name}: present (AI score {score}).",
        "doubt": "{name}: doubtful (AI score {score}), to be checked.",
        "normal": "No {name_lower}.",
        "conclusion_abnormal": "{names}. Correlate with the clinical findings.",
        "conclusion_normal": "No acute abnormality on this chest radiograph.",
    },
    "fr": {
        "title": "Radiographie thoracique",
        "indication": "Douleur thoracique après une chute. Recherche de fracture et d'épanchement.",
        "technique": "{n} cliché(s) du thorax, de face et de profil si disponibles.",
        "abnormal": "{name} : présent(e) (score IA {score}).",
        "doubt": "{name} : douteux (score IA {score}), à contrôler.",
        "normal": "Pas de {name_lower}.",
        "conclusion_abnormal": "{names}. À corréler à la clinique.",
        "conclusion_normal": "Pas d'anomalie aiguë sur cette radiographie thoracique.",
    },
}


def techcare_report(
    study_uid: str, instances: list[InputInstance], language: str
) -> dict[str, Any]:
    """The report body of GET /v1/reports/{study}: title, indication, technique, findings,
    conclusion, in `language` (en or fr)."""
    text = _TEXT[language]
    findings = smarturgences_findings(study_uid, instances)["findings"]
    lines: list[str] = []
    positive: list[str] = []
    for finding in findings:
        name = finding["translation"][language]
        template = text.get(finding["label"], text["normal"])
        lines.append(template.format(name=name, name_lower=name.lower(), score=finding["score"]))
        if finding["label"] == "abnormal":
            positive.append(name)
    conclusion = (
        text["conclusion_abnormal"].format(names=", ".join(positive))
        if positive
        else text["conclusion_normal"]
    )
    return {
        "title": text["title"],
        "indication": text["indication"],
        "technique": text["technique"].format(n=len(instances)),
        "findings": "\n".join(lines),
        "conclusion": conclusion,
        "language": language,
    }
