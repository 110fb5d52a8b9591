"""A written radiology report (TechCare Report), and its plain-text and HTML renderings."""

from __future__ import annotations

import html

from pacsor.domain.events import WrittenReport

_HEADINGS = {
    "EN": ("Indication", "Technique", "Findings", "Conclusion"),
    "FR": ("Indication", "Technique", "Résultats", "Conclusion"),
}


class Report(WrittenReport, frozen=True, kw_only=True):
    """A report as the message carries it: its sections, as text or as an HTML page."""

    def sections(self) -> list[tuple[str, str]]:
        headings = _HEADINGS.get(self.language.upper(), _HEADINGS["EN"])
        texts = (self.indication, self.technique, self.findings, self.conclusion)
        return [(heading, text) for heading, text in zip(headings, texts, strict=True) if text]

    def as_text(self) -> str:
        parts = [self.title]
        for heading, text in self.sections():
            parts.append(f"{heading}:\n{text}")
        return "\n\n".join(parts)

    def as_html(self) -> str:
        """A whole HTML page, so that the RIS or a person can save it as an .html file."""
        lang = html.escape(self.language.lower())
        title = html.escape(self.title)
        body = "".join(
            f"<h2>{html.escape(heading)}</h2>\n<p>{_paragraph(text)}</p>\n"
            for heading, text in self.sections()
        )
        return (
            f'<!DOCTYPE html>\n<html lang="{lang}">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n</head>\n<body>\n<h1>{title}</h1>\n{body}</body>\n</html>\n"
        )


def _paragraph(text: str) -> str:
    return "<br>\n".join(html.escape(line) for line in text.splitlines())
