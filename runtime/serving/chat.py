"""Chat messages to token ids and token ids back to text, with the served model's own tokenizer and template."""

from __future__ import annotations

import json
from pathlib import Path

from runtime.serving.openai_api import ChatMessage


class ChatTokenizer:
    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tok.chat_template:
            raise ValueError(f"the tokenizer in {model_dir} has no chat template")
        # A template that does not know tool calls would drop them: they go into the text instead.
        self._template_knows_tools = "tool_calls" in self.tok.chat_template

    def encode(self, messages: list[ChatMessage], tools: list[dict] | None = None) -> list[int]:
        rendered = [self._message(m) for m in messages]
        kwargs = {"tools": tools} if tools and self._template_knows_tools else {}
        text = self.tok.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True, **kwargs)
        if tools and not self._template_knows_tools:
            text = f"Tools: {json.dumps(tools)}\n{text}"
        return self.tok.encode(text, add_special_tokens=False)

    def _message(self, m: ChatMessage) -> dict:
        out: dict = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            if self._template_knows_tools:
                out["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            else:
                calls = "; ".join(f"{c.function.name}({c.function.arguments})" for c in m.tool_calls)
                out["content"] = f"{out['content']}\n[calls {calls}]".lstrip()
        if m.tool_call_id:
            out["tool_call_id"] = m.tool_call_id
        return out

    def decode(self, token_ids: list[int]) -> str:
        return self.tok.decode(token_ids, skip_special_tokens=True)


class IncrementalText:
    """Text deltas of a growing token sequence (a token's text can depend on the ones after it)."""

    def __init__(self, tokenizer: ChatTokenizer):
        self._tok = tokenizer
        self.token_ids: list[int] = []
        self._text = ""

    def add(self, token_ids: list[int]) -> str:
        self.token_ids += token_ids
        text = self._tok.decode(self.token_ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta = text[len(self._text):] if text.startswith(self._text) else text
        self._text = text
        return delta

    @property
    def text(self) -> str:
        return self._tok.decode(self.token_ids)
