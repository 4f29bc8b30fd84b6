"""Local models: built here with no downloads and loadable by transformers. That real vLLM (CPU build) serves them
is what every engine test shows: tests/engine/test_vllm_engine.py (exact lengths, greedy answers repeat) and
tests/engine/test_drop_in.py (vLLM's own OpenAI server)."""

import json
import os

import pytest

from runtime.engine.tiny_model import PRESETS, ModelPreset, build_model, get_preset

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return tiny_model


def test_tiny_loads_in_transformers_with_a_chat_template(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 128
    assert model.config.head_dim == 32 and model.dtype == torch.bfloat16
    text = tok.apply_chat_template([{"role": "user", "content": "ping"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|user|>\nping</s>\n<|assistant|>\n"
    ids = tok("any text, even ünïcode ✓", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "any text, even ünïcode ✓"  # byte-level BPE: nothing is unknown
    out1 = model.generate(ids, max_new_tokens=6, do_sample=False)
    out2 = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out1.shape[1] == ids.shape[1] + 6 and torch.equal(out1, out2)


def test_build_is_seeded_and_idempotent(tiny, tmp_path):
    marker = json.loads((tiny / "agentriver_model.json").read_text())
    assert marker["params"] == pytest.approx(PRESETS["tiny"].params, rel=0.01)
    mtime = (tiny / "model.safetensors").stat().st_mtime_ns
    assert build_model("tiny", tiny) == tiny and (tiny / "model.safetensors").stat().st_mtime_ns == mtime
    again = build_model("tiny", tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()


def test_presets_are_validated():
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ValueError, match="head_dim 16"):
        ModelPreset("bad", 64, 1, 4, 2, 16, 128, 512, 512)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ModelPreset("bad", 64, 1, 3, 2, 32, 128, 512, 512)
    small = get_preset("small")
    assert small.params > 20 * PRESETS["tiny"].params
