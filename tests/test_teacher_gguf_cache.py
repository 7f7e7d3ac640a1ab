"""The de-quantized GGUF folder (`distill.gguf_cache`): written on the first load, read on later ones, rebuilt
when damaged, one build when two processes start at once. On a tiny Q4_1 Llama GGUF written here."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill import gguf_cache, models

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The nurse said that she would call the surgeon."


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer Llama with random weights, 2-D tensors quantized to Q4_1 (as the real teacher's), and the
    project's tiny byte-level BPE tokenizer in GGUF's gpt2 tokenizer fields."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = json.loads((ROOT / "data" / "tiny_tokenizer" / "tokenizer.json").read_text())
    tokens = [t for t, _ in sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]]
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=len(tokens),
                                         max_position_embeddings=64))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_dimension_count(8)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i == 0 else 1 for i in range(len(tokens))])  # 3: control (<|endoftext|>)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, param in model.state_dict().items():
        if name in top:
            gname = top[name] + ".weight"
        else:  # model.layers.<i>.<module path>.weight
            parts = name.split(".")
            gname = f"blk.{parts[2]}.{block['.'.join(parts[3:-1])]}.weight"
        array = param.detach().numpy().astype(np.float32)
        if array.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q4_1),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        else:
            w.add_tensor(gname, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    (tmp_path / "teacher").mkdir()
    return write_tiny_gguf(tmp_path / "teacher" / "tiny.Q4_1.gguf")


@pytest.fixture
def dequantize_calls(monkeypatch):
    """How many times transformers read a GGUF file's tensors and metadata (it imports this function lazily
    from its module at each use, so a spy on the module attribute sees every call)."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    calls = []
    real = gguf_utils.load_gguf_checkpoint

    def spy(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", spy)
    return calls


def _logits(model, tok):
    with torch.no_grad():
        return model(torch.tensor([tok(TEXT).input_ids])).logits


def _direct(gguf: Path, dtype: torch.dtype):
    """The GGUF loaded by transformers itself, the path every load took before the cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype), tok


def _folders(gguf: Path) -> list[Path]:
    return sorted(p for p in gguf.parent.iterdir() if p.is_dir())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_first_load_writes_the_folder_and_the_second_reads_it_with_the_gguf_logits(
        tiny_gguf, dequantize_calls, capsys, dtype):
    model, tok = models.load_model_and_tokenizer(str(tiny_gguf), dtype)
    (folder,) = _folders(tiny_gguf)
    assert folder.name.startswith("tiny.Q4_1.hf-")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
    assert manifest["gguf"]["size"] == tiny_gguf.stat().st_size
    assert dequantize_calls, "the first load de-quantizes the GGUF"
    first_err = capsys.readouterr().err
    assert first_err.count("distill: de-quantizing") == 1

    dequantize_calls.clear()
    manifest_mtime = (folder / "manifest.json").stat().st_mtime_ns
    again, again_tok = models.load_model_and_tokenizer(str(tiny_gguf), dtype)
    assert dequantize_calls == [], "the second load must read the folder, not the GGUF"
    assert "distill:" not in capsys.readouterr().err
    assert (folder / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert next(again.parameters()).dtype == models.DTYPES[dtype]

    ref, ref_tok = _direct(tiny_gguf, models.DTYPES[dtype])
    assert again_tok(TEXT).input_ids == ref_tok(TEXT).input_ids
    assert again_tok.get_vocab() == ref_tok.get_vocab()
    torch.testing.assert_close(_logits(again, again_tok), _logits(ref, ref_tok), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_logits(model, tok), _logits(ref, ref_tok), rtol=1e-5, atol=1e-6)


def _truncate(folder: Path):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])


def _drop_manifest(folder: Path):
    (folder / "manifest.json").unlink()


def _scramble_tokenizer(folder: Path):
    path = folder / "tokenizer.json"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, other content
    path.write_bytes(bytes(data))


def _corrupt_header(folder: Path):
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[9] = ord(" ") if data[9] != ord(" ") else ord("\t")  # one byte of the JSON header, same size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _drop_manifest, _scramble_tokenizer, _corrupt_header])
def test_a_damaged_folder_is_rebuilt_with_one_line(tiny_gguf, dequantize_calls, capsys, damage):
    models.load_model_and_tokenizer(str(tiny_gguf))
    (folder,) = _folders(tiny_gguf)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    damage(folder)
    assert gguf_cache._problem(folder, json.loads(good["manifest.json"])["gguf"]["sha256"]) is not None

    dequantize_calls.clear()
    model, tok = models.load_model_and_tokenizer(str(tiny_gguf))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("distill:")]
    assert len(lines) == 1 and "damaged" in lines[0] and "rebuilding" in lines[0], lines
    assert dequantize_calls, "a damaged folder is rebuilt from the GGUF"
    assert _folders(tiny_gguf) == [folder]
    for name, data in good.items():
        if name != "manifest.json":
            assert (folder / name).read_bytes() == data, name
    ref, ref_tok = _direct(tiny_gguf, torch.float32)
    torch.testing.assert_close(_logits(model, tok), _logits(ref, ref_tok), rtol=1e-5, atol=1e-6)


def test_an_unwritable_folder_falls_back_to_the_gguf(tiny_gguf, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_cache, "atomic_dir", no_space)
    model, tok = models.load_model_and_tokenizer(str(tiny_gguf))
    assert "could not write" in capsys.readouterr().err
    assert _folders(tiny_gguf) == []
    ref, ref_tok = _direct(tiny_gguf, torch.float32)
    torch.testing.assert_close(_logits(model, tok), _logits(ref, ref_tok))


def test_two_processes_starting_at_once_build_the_folder_once(tiny_gguf):
    code = ("import sys; from pathlib import Path; from distill.gguf_cache import dequantized_dir; "
            "print(dequantized_dir(Path(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_gguf)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    (folder,) = _folders(tiny_gguf)
    assert {out.strip() for out, _ in outs} == {str(folder)}
    assert sum(err.count("distill: de-quantizing") for _, err in outs) == 1, outs  # one built, the other waited
    sha = json.loads((folder / "manifest.json").read_text())["gguf"]["sha256"]
    assert gguf_cache._problem(folder, sha) is None
    assert not [p.name for p in tiny_gguf.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]
