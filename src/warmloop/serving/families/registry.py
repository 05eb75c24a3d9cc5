"""Which family a template belongs to: a table keyed by what the template contains,
asked in order (most specific first); a template that knows no tools gets the generic
frame. docs/models.md lists the families and what each was verified on."""

from __future__ import annotations

from warmloop.serving.families.base import Family
from warmloop.serving.families.deepseek import DeepSeekR1, DeepSeekV3
from warmloop.serving.families.gemma import FunctionGemma, GemmaCalls
from warmloop.serving.families.generic import Generic
from warmloop.serving.families.glm import Glm
from warmloop.serving.families.granite import Granite
from warmloop.serving.families.harmony import Harmony
from warmloop.serving.families.hermes import Hermes
from warmloop.serving.families.llama3 import Llama3
from warmloop.serving.families.mistral import MistralArgs, MistralArgsWithIds, MistralNemo
from warmloop.serving.families.qwen3_coder import Qwen3Coder

FAMILIES: tuple[type[Family], ...] = (
    Harmony,  # gpt-oss: channels, not markers in text
    DeepSeekR1,  # before DeepSeekV3: the same block with fenced arguments
    DeepSeekV3,
    Qwen3Coder,  # before Hermes: its templates also write <tool_call>
    Glm,  # before Hermes too
    Hermes,
    Llama3,
    Granite,  # after Hermes: Granite 4 writes <tool_call> and is Hermes-shaped
    MistralArgsWithIds,  # before MistralArgs and MistralNemo: each is a narrower match
    MistralArgs,
    MistralNemo,
    GemmaCalls,  # Gemma 4
    FunctionGemma,
)


def family_for(template: str) -> Family:
    """The family whose syntax `template` renders; the generic frame when none does."""
    for family in FAMILIES:
        if family.detect(template):
            return family(template)
    return Generic(template)


def family_named(name: str) -> Family:
    kinds: tuple[type[Family], ...] = (*FAMILIES, Generic)
    for family in kinds:
        if family.name == name:
            return family()
    raise KeyError(name)
