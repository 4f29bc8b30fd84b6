"""Local models: built here with no downloads, loadable by transformers and served by real vLLM (CPU build)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from runtime.engine.tiny_model import PRESETS, ModelPreset, build_model, get_preset

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_model("tiny", tmp_path_factory.mktemp("models") / "tiny")


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


def test_real_vllm_serves_the_tiny_model(tiny):
    """vLLM starts its engine in a spawned process, so it runs in a script with a __main__ guard."""
    script = textwrap.dedent(f"""
        import os
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM(model={str(tiny)!r}, max_model_len=1024, block_size=32, max_num_seqs=8, enforce_eager=True)
            sp = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
            outs = llm.generate([{{"prompt_token_ids": list(range(10, 60))}}] * 3, sp, use_tqdm=False)
            toks = [list(o.outputs[0].token_ids) for o in outs]
            assert all(len(t) == 16 for t in toks) and toks[0] == toks[1] == toks[2], toks
            print("VLLM_OK", toks[0][:4])
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "VLLM_OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
