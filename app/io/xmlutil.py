"""Small namespace-aware XML helpers for the metadata records of configuration files.

Record payloads from other codes carry trailing NULs, leading blank lines before the XML
declaration and default namespaces (``<ildgFormat xmlns="http://www.lqcd.org/ildg">``);
elements are therefore matched by their local name, whatever namespace they are in.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .errors import ConfigFormatError


def clean_text(payload: bytes) -> str:
    """Decode a record payload: strip NUL padding and surrounding whitespace."""
    return payload.replace(b"\0", b"").decode("utf-8", errors="replace").strip()


def local_name(tag: str) -> str:
    """``'{http://www.lqcd.org/ildg}lx'`` -> ``'lx'``."""
    return tag.rsplit("}", 1)[-1]


def parse_xml(text: str, what: str) -> ET.Element:
    """Parse ``text``; raise :class:`ConfigFormatError` naming ``what`` if it is not XML."""
    try:
        return ET.fromstring(text)
    except ET.ParseError as err:
        raise ConfigFormatError(f"{what}: malformed XML ({err}): {text[:200]!r}") from None


def find_text(root: ET.Element, name: str) -> str | None:
    """Text of the first element (root included) whose local name is ``name``."""
    for el in root.iter():
        if local_name(el.tag) == name:
            return (el.text or "").strip()
    return None


def to_xml(root: ET.Element) -> bytes:
    """Serialise with an XML declaration, as QIO does."""
    body = ET.tostring(root, encoding="unicode")
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body.encode("utf-8")


def element(tag: str, children: dict[str, object] | None = None, **attrib: str) -> ET.Element:
    """An element with simple text children ``{name: value}`` in order."""
    el = ET.Element(tag, attrib)
    for key, value in (children or {}).items():
        ET.SubElement(el, key).text = str(value)
    return el
