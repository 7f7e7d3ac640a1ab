"""Top-k teacher targets and their per-block cache (`loss.teacher_top_k`)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from distill.cli import main
from distill.train.target_cache import TopKTargetCache, dense_targets


def _probs(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(*shape, generator=g) * 3, -1)


def test_dense_targets_keep_the_top_k_and_spread_the_rest_evenly():
    p = _probs(2, 5, 40)
    values, ids = torch.topk(p, 6, dim=-1)
    q = dense_targets(values, ids, 40)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(q.gather(-1, ids), values)
    rest = 1 - values.sum(-1, keepdim=True)
    outside = torch.ones_like(p, dtype=torch.bool).scatter_(-1, ids, False)
    torch.testing.assert_close(q[outside].view(2, 5, 34), (rest / 34).expand(2, 5, 34))
    tv = 0.5 * (q - p).abs().sum(-1)
    assert (tv <= rest.squeeze(-1) + 1e-6).all()  # total variation from p is at most the mass left out
    torch.testing.assert_close(dense_targets(*torch.topk(p, 40, dim=-1), 40), p)  # k = V: p itself


def test_cache_computes_each_block_once_and_returns_the_same_targets():
    full = _probs(6, 4, 30, seed=1)  # the "teacher": block b -> full[b]
    calls = []

    def compute(ids):
        calls.append(ids[:, 0].tolist())
        return full[ids[:, 0]], 0.25

    def targets(blocks, rows):  # as kd_step uses the cache
        todo = cache.missing(blocks)
        if todo:
            probs, share = compute(rows[todo])
            cache.put([blocks[i] for i in todo], probs, share)
        return cache.get(blocks, rows.device)

    cache = TopKTargetCache(5, 30)
    ids = torch.arange(6).unsqueeze(1).expand(6, 4)
    first, changed, kept = targets([0, 1, 2], ids[[0, 1, 2]])
    again, _, _ = targets([2, 3, 0], ids[[2, 3, 0]])
    assert calls == [[0, 1, 2], [3]]  # only the block not seen yet goes to the teacher
    assert torch.equal(again[0], first[2]) and torch.equal(again[2], first[0])
    values, top = torch.topk(full[:3], 5, dim=-1)
    torch.testing.assert_close(first, dense_targets(values, top, 30))
    assert changed == 0.25 and kept == pytest.approx(values.sum(-1).mean().item())
    assert (cache.hits, cache.misses) == (2, 4)


def _run(tmp_path, name, *extra):
    out = tmp_path / name
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", "loss.alpha_cos=0",
              "train.max_steps=70", "train.eval_steps=0", "train.save_steps=0", "train.log_steps=10", *extra])
    assert exit_info.value.code == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(str(out / "final" / "model.safetensors")), [r for r in records if "loss" in r]


def test_cached_run_equals_a_run_that_recomputes_every_target(tmp_path, monkeypatch):
    cached, logs = _run(tmp_path, "cached", "loss.teacher_top_k=32")
    assert logs[-1]["epoch"] >= 1 and logs[-1]["teacher_cache_hit_share"] > 0.4
    assert 0 < logs[-1]["teacher_topk_mass"] < 1
    real = TopKTargetCache.missing

    def forgetful(self, *args, **kwargs):
        self.store.clear()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TopKTargetCache, "missing", forgetful)
    fresh, fresh_logs = _run(tmp_path, "fresh", "loss.teacher_top_k=32")
    assert fresh_logs[-1]["teacher_cache_hit_share"] == 0
    for key in cached:  # same targets, whether cached or not: the same training up to float rounding
        torch.testing.assert_close(cached[key], fresh[key], rtol=1e-4, atol=1e-5, msg=key)
    monkeypatch.undo()
    full, _ = _run(tmp_path, "full")
    assert max((cached[k] - full[k]).abs().max().item() for k in full) > 1e-4  # top-k targets do differ


@pytest.mark.parametrize("extra,message", [
    (["loss.teacher_top_k=8"], "cannot serve loss.alpha_cos"),
    (["loss.teacher_top_k=5000", "loss.alpha_cos=0"], "keeps the whole vocabulary"),
])
def test_bad_top_k_settings_give_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--recipe", "recipes/debug.yaml", f"output_dir={out}", *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()
