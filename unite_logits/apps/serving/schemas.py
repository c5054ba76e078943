"""Request bodies of the OpenAI endpoints the server speaks, validated before any work starts.

Fields the ensemble cannot honour (tools, penalties, logit bias, ...) are refused with a
400 when set to anything but their neutral value, rather than ignored: a client must not
believe it got something it did not. Fields with no effect on the result (``user``,
``metadata``, ``store``) and unknown extras are accepted and ignored, as other OpenAI-compatible
servers do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ...ensemble.options import MAX_SEED, MAX_TOP_LOGPROBS, GenerationOptions

__all__ = [
    "SamplingFields",
    "ChatCompletionRequest",
    "CompletionRequest",
    "MAX_CHOICES",
    "MAX_STOP_STRINGS",
    "MAX_COMPLETION_LOGPROBS",
    "TokenizeRequest",
    "DetokenizeRequest",
]

MAX_CHOICES = 8  # n (times prompts) per request: each choice is a row of the batch it runs in
MAX_STOP_STRINGS = 4  # as the OpenAI API
MAX_COMPLETION_LOGPROBS = 5  # legacy completions' ``logprobs`` limit in the OpenAI API


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; content is text or a list of text parts (images and audio are refused)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None

    @model_validator(mode="after")
    def _has_content(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content")
        return self

    def as_template_message(self) -> dict[str, str]:
        """The ``{"role", "content"}`` dict chat templates take ("developer" is a system message)."""
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields common to both endpoints."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=0, strict=True)  # strict: `true` is not 1; 0 with echo only
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, strict=True)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, strict=True)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        strings = [value] if isinstance(value, str) else value or []
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(not s for s in strings):
            raise ValueError("stop strings have to be non-empty")
        return value

    @model_validator(mode="after")
    def _unsupported(self) -> "SamplingFields":
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                raise ValueError(f"{name} is not supported by this server (leave it out or 0)")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported by this server")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.max_tokens == 0 and not getattr(self, "echo", False):
            raise ValueError("max_tokens: 0 generates nothing; it only makes sense with echo: true")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def options(self, default_max_tokens: int, top_logprobs: int | None) -> GenerationOptions:
        return GenerationOptions(
            max_new_tokens=(self.max_tokens if self.max_tokens is not None else default_max_tokens) or 1,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop_strings,
            top_logprobs=top_logprobs,
            seed=self.seed,
        )


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS, strict=True)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_rules(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.tools:
            raise ValueError("tools are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("only response_format type 'text' is supported by this server")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def template_messages(self) -> list[dict[str, str]]:
        return [m.as_template_message() for m in self.messages]

    @property
    def wanted_top_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(BaseModel):
    """``POST /tokenize``: ``prompt`` (vLLM, lm-eval) or ``content`` (llama.cpp)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = None
    content: str | None = None
    add_special_tokens: bool = True

    @model_validator(mode="after")
    def _has_text(self) -> "TokenizeRequest":
        if self.prompt is None and self.content is None:
            raise ValueError("prompt is required")
        return self

    @property
    def text(self) -> str:
        return self.prompt if self.prompt is not None else str(self.content)


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model_config = ConfigDict(extra="ignore")

    tokens: list[int] = Field(strict=True)


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: plain continuation of one prompt or a list of prompts, each text
    or the primary's token ids. With ``echo`` the prompt comes back with the ensemble's
    log-probability of each of its tokens (``logprobs``: and its likeliest alternatives), as
    the OpenAI legacy API and vLLM return them; ``max_tokens: 0`` then only scores the prompt."""

    prompt: str | list[str] | list[list[int]] | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS, strict=True)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _completion_rules(self) -> "CompletionRequest":
        if self.suffix:
            raise ValueError("suffix is not supported by this server")
        if self.best_of not in (None, 1, self.n):
            raise ValueError("best_of is not supported by this server")
        if not self.prompts:
            raise ValueError("prompt is an empty list")
        if len(self.prompts) * self.n > MAX_CHOICES and not self.echo:
            raise ValueError(f"at most {MAX_CHOICES} completions per request (prompts x n)")
        if any((not p.strip()) if isinstance(p, str) else not p for p in self.prompts):
            raise ValueError("the prompt is empty")
        if self.echo and (self.stream or self.n != 1):
            raise ValueError("echo works with stream: false and n: 1")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(t, int) for t in self.prompt):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]
