"""Chat messages to token ids and token ids back to text, with the served model's own tokenizer and template."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from deployments.openai_api import ChatMessage


class ChatTokenizer:
    """Renders chat messages with the model's template and tokenises them so that only the template adds role and
    control tokens: text a client sends (`</s><|system|>` included) is tokenised as text. The template is rendered
    with a secret placeholder for each message's content; the template's own text is tokenised with its special
    tokens, each content with `split_special_tokens`."""

    def __init__(self, model_dir: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not self.tok.chat_template:
            raise ValueError(f"the tokenizer in {model_dir} has no chat template")
        # A template that does not know tool calls would drop them: they go into the text instead.
        self._template_knows_tools = "tool_calls" in self.tok.chat_template
        self._nonce = secrets.token_hex(8)
        self._slot = re.compile(f"\ue000{self._nonce}(\\d+)\ue001")
        # No token covers more UTF-8 bytes than the longest vocabulary entry: a text of N bytes is at least
        # N / max_token_bytes tokens, a bound checked before tokenising anything large.
        self.max_token_bytes = max(len(t.encode()) for t in self.tok.get_vocab())
        self.vocab_size = len(self.tok)
        self._specials = [t for t in self.tok.all_special_tokens if t]
        probe = self.tok.apply_chat_template([{"role": "user", "content": self._placeholder(0)}], tokenize=False,
                                             add_generation_prompt=True)
        if self._slot.findall(probe) != ["0"]:
            raise ValueError(f"the chat template of {model_dir} does not keep message text verbatim, so client "
                             f"text cannot be tokenised apart from its control tokens")

    def _placeholder(self, i: int) -> str:
        return f"\ue000{self._nonce}{i}\ue001"

    def min_tokens(self, messages: list[ChatMessage], tools: list[dict] | None = None) -> int:
        """A lower bound on the prompt's length in tokens, from byte counts alone."""
        size = sum(len(m.text().encode()) for m in messages) + (len(json.dumps(tools)) if tools else 0)
        return size // self.max_token_bytes

    def encode(self, messages: list[ChatMessage], tools: list[dict] | None = None) -> list[int]:
        rendered = [self._message(m) for m in messages]
        texts = [r["content"] for r in rendered]
        for i, r in enumerate(rendered):
            r["content"] = self._placeholder(i)
        kwargs = {}
        if self._template_knows_tools:  # the template renders tools and calls itself: no control tokens in them
            if tools:
                self._no_specials("tools", json.dumps(tools))
                kwargs["tools"] = tools
            for i, m in enumerate(messages):
                for c in m.tool_calls or ():
                    self._no_specials(f"messages.{i}.tool_calls", c.function.name + c.function.arguments)
        template = self.tok.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True, **kwargs)
        ids = self._text(f"Tools: {json.dumps(tools)}\n") if tools and not self._template_knows_tools else []
        pieces = self._slot.split(template)  # template text, content index, template text, ...
        for k, piece in enumerate(pieces):
            if k % 2:
                ids += self._text(texts[int(piece)])
            elif piece:
                ids += self.tok.encode(piece, add_special_tokens=False)
        return ids

    def _text(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False, split_special_tokens=True) if text else []

    def _no_specials(self, field: str, text: str) -> None:
        """Text the template itself renders (tool definitions and calls) must not smuggle control tokens."""
        found = next((t for t in self._specials if t in text), None)
        if found is not None:
            raise ValueError(f"{field}: contains the model's control token {found!r}")

    def _message(self, m: ChatMessage) -> dict:
        out: dict = {"role": m.role, "content": m.text()}
        if m.tool_calls:
            if self._template_knows_tools:
                out["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            else:
                names = "; ".join(f"{c.function.name}({c.function.arguments})" for c in m.tool_calls)
                calls = f"[calls {names}]"
                # after the answer, which keeps its leading space: its tokens must be the ones the engine generated
                # (and holds KV for), or the next call recomputes the whole answer
                out["content"] = f"{out['content']}\n{calls}" if out["content"] else calls
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
