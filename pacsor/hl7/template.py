"""A site's changes to the ORU^R01 layout, as data: which optional segments to leave out and
what to put in which fields. A template cannot run code: it is JSON, and its values are text
with `$name` placeholders from a fixed list (string.Template), nothing else.

    {
      "omit": ["PV1", "ORC"],
      "fields": {
        "PID-18": "$accession_number",
        "OBR-4": "$modality^$study_description^LOCAL",
        "OBR-13": "Requested by the emergency department"
      }
    }

A field value is ER7 text: `^` and `&` separate components and subcomponents; a placeholder's
value is escaped, so patient data can never add a component, a field or a segment. A field
is set in every segment of that name. Whether the result is a message hl7apy parses is
checked when the template is loaded (pacsor.hl7.oru.check_template), so a template that
breaks the message is refused and the previous one stays.
"""

from __future__ import annotations

import re
from string import Template

import msgspec

from pacsor.errors import InvalidInput

OPTIONAL_SEGMENTS = ("PID", "PV1", "ORC", "NTE")
SEGMENTS = ("MSH", "PID", "PV1", "ORC", "OBR", "NTE", "OBX")
PLACEHOLDERS = (
    "study_instance_uid",
    "patient_id",
    "issuer_of_patient_id",
    "patient_family_name",
    "patient_given_name",
    "birth_date",
    "sex",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
    "modality",
    "control_id",
    "message_time",
)
_TARGET = re.compile(r"^(MSH|PID|PV1|ORC|OBR|NTE|OBX)-([1-9][0-9]?)$")


class TemplateError(InvalidInput):
    """The template is not one pacsor can apply; the message says where."""


class FieldRule(msgspec.Struct, frozen=True):
    segment: str
    number: int
    text: str  # ER7 with $placeholders

    def render(self, values: dict[str, str]) -> str:
        return Template(self.text).substitute(values)


class MessageTemplate(msgspec.Struct, frozen=True, kw_only=True):
    omit: tuple[str, ...] = ()
    fields: tuple[FieldRule, ...] = ()

    def rules_for(self, segment: str) -> tuple[FieldRule, ...]:
        return tuple(rule for rule in self.fields if rule.segment == segment)


class _TemplateFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    omit: list[str] = []
    fields: dict[str, str] = {}


def parse_template(data: bytes | str) -> MessageTemplate:
    """Read and check a template; TemplateError says what is wrong."""
    try:
        raw = msgspec.json.decode(data, type=_TemplateFile)
    except msgspec.MsgspecError as err:
        raise TemplateError(f"template: {err}") from err
    for name in raw.omit:
        if name not in OPTIONAL_SEGMENTS:
            raise TemplateError(
                f"template omit: {name!r} cannot be left out; only {', '.join(OPTIONAL_SEGMENTS)}"
            )
    rules = []
    for target, text in raw.fields.items():
        match = _TARGET.match(target)
        if match is None:
            raise TemplateError(
                f"template field {target!r}: expected SEGMENT-NUMBER, SEGMENT one of "
                f"{', '.join(SEGMENTS)}"
            )
        segment, number = match.group(1), int(match.group(2))
        if segment == "MSH" and number <= 2:
            raise TemplateError(f"template field {target}: the encoding characters are fixed")
        if re.search(r"[|~\\\r\n\x00-\x1f]", text):
            raise TemplateError(
                f"template field {target}: no |, ~, backslash or control character in the text"
            )
        template = Template(text)
        if not template.is_valid():
            raise TemplateError(f"template field {target}: a $ that is not a placeholder")
        unknown = sorted(set(template.get_identifiers()) - set(PLACEHOLDERS))
        if unknown:
            raise TemplateError(
                f"template field {target}: unknown placeholder(s) {', '.join(unknown)}; "
                f"known: {', '.join(PLACEHOLDERS)}"
            )
        rules.append(FieldRule(segment, number, text))
    return MessageTemplate(omit=tuple(raw.omit), fields=tuple(rules))
