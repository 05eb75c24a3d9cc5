"""Model families: each one owns a tool-call syntax's rendering, grammar and parser."""

from warmloop.serving.families.base import Family
from warmloop.serving.families.parsing import (
    ArgsDelta,
    CallEnd,
    CallParser,
    CallStart,
    ReasoningDelta,
    ReasoningEnd,
    Segment,
    TextDelta,
)
from warmloop.serving.families.registry import FAMILIES, family_for, family_named

__all__ = [
    "FAMILIES",
    "ArgsDelta",
    "CallEnd",
    "CallParser",
    "CallStart",
    "Family",
    "ReasoningDelta",
    "ReasoningEnd",
    "Segment",
    "TextDelta",
    "family_for",
    "family_named",
]
