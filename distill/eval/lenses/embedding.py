"""The embedding-association lens: SEAT/CEAT-style tests on a model's own contextual representations.

    distill eval --model teacher=T --model student=S --lens embedding --out out/eval
    # in Python:
    spec = load_embedding_spec()                       # data/lenses/embedding_tests.json + templates
    check_placeable(spec, tokenizer)                   # one UserError line per word a tokenizer cannot place
    reps = word_representations(model, tok, spec)      # {word: (n_templates, hidden)} mean over the word's tokens
    result = embedding_lens(reps, spec, n_perm=10000, seed=0)

Each word of a test is put into every neutral sentence template of data/lenses/embedding_templates.txt; its
representation in one template is the mean hidden state over the word's own tokens (last layer unless a layer
is chosen). For every test (targets X vs Y, attributes A = male terms vs B = female terms) the lens reports

* Caliskan et al.'s effect size d on template-averaged associations, with a permutation p-value;
* CEAT's random-effects combination of the per-template effect sizes (Guo & Caliskan 2021);

and, over all (test, template) effect sizes, one random-effects combined effect size with its p-value and
95% interval: the lens's single number. The templates reuse the same words, so the combination treats alike
replicates as independent (as CEAT does with its context samples): its p and interval are optimistic, and
the per-test permutation p over words is the conservative check. Tests are oriented so that a positive d is the stereotype
(X is the stereotypically male target), so the combination over tests has a meaning.

Pure numpy from `word_representations` on; the model is only needed to get the vectors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import UserError
from distill.eval.runtime import plain_forward

DATA = Path(__file__).resolve().parents[3] / "data" / "lenses"
TESTS_FILE = DATA / "embedding_tests.json"
TEMPLATES_FILE = DATA / "embedding_templates.txt"
SLOT = "{w}"


@dataclass(frozen=True)
class AssociationTest:
    name: str
    x: tuple[str, ...]  # stereotypically male targets
    y: tuple[str, ...]  # stereotypically female targets
    a: tuple[str, ...]  # male attribute terms
    b: tuple[str, ...]  # female attribute terms


@dataclass(frozen=True)
class EmbeddingSpec:
    tests: tuple[AssociationTest, ...]
    templates: tuple[str, ...]

    def words(self) -> list[str]:
        """Every word any test uses, once, in first-seen order."""
        seen: dict[str, None] = {}
        for t in self.tests:
            for w in (*t.x, *t.y, *t.a, *t.b):
                seen.setdefault(w, None)
        return list(seen)


def load_embedding_spec(tests_path: Path | str = TESTS_FILE, templates_path: Path | str = TEMPLATES_FILE) -> EmbeddingSpec:
    """Read the tests (JSON: {"tests": [{"name", "x", "y", "a", "b"}]}) and templates (one per line, each with {w})."""
    raw = json.loads(Path(tests_path).read_text(encoding="utf-8"))
    tests = []
    for t in raw["tests"]:
        tests.append(AssociationTest(t["name"], *(tuple(t[k]) for k in ("x", "y", "a", "b"))))
        for k in ("x", "y", "a", "b"):
            if len(t[k]) < 2:
                raise UserError(f"embedding test {t['name']!r}: set {k!r} needs at least 2 words")
    lines = [ln.strip() for ln in Path(templates_path).read_text(encoding="utf-8").splitlines()]
    templates = tuple(ln for ln in lines if ln and not ln.startswith("#"))
    bad = [t for t in templates if t.count(SLOT) != 1]
    if bad or not templates:
        raise UserError(f"{templates_path}: every template needs exactly one {SLOT} slot (bad: {bad[:2]})")
    return EmbeddingSpec(tuple(tests), templates)


# ---------------------------------------------------------------------------------------- word placement


def word_token_span(tokenizer, sentence: str, start: int, end: int) -> tuple[list[int], list[int]] | str:
    """(input_ids, positions of the tokens that make up sentence[start:end]) or a reason it cannot be placed.

    A token belongs to the word when its character span overlaps [start, end). The word is placeable when
    at least one token overlaps it, every overlapping token lies inside the word apart from whitespace (a
    token merged with a neighbouring character would mix context into the word's vector), and none of them
    is the unknown token.
    """
    if not getattr(tokenizer, "is_fast", False):
        return "the tokenizer is not a fast tokenizer (character offsets are needed to find the word)"
    enc = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    pos = []
    for i, (s, e) in enumerate(offsets):
        if e <= start or s >= end or s == e:
            continue
        outside = sentence[s:start] + sentence[end:e]
        if outside.strip():
            return f"a token spans {sentence[s:e]!r}, across the word's edge"
        pos.append(i)
    if not pos:
        return "no token covers it"
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and any(ids[i] == unk for i in pos):
        return "the tokenizer maps it to the unknown token"
    return ids, pos


def _placements(spec: EmbeddingSpec, tokenizer) -> dict[str, list[tuple[list[int], list[int]]]]:
    out, problems = {}, []
    for w in spec.words():
        rows = []
        for tpl in spec.templates:
            start = tpl.index(SLOT)
            sentence = tpl.replace(SLOT, w)
            got = word_token_span(tokenizer, sentence, start, start + len(w))
            if isinstance(got, str):
                problems.append(f"{w!r} in {tpl!r}: {got}")
                break
            rows.append(got)
        out[w] = rows
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"embedding lens: the tokenizer cannot place target word {problems[0]}{more}; "
                        "remove the word from data/lenses/embedding_tests.json or use another tokenizer")
    return out


def check_placeable(spec: EmbeddingSpec, tokenizer, name: str = "") -> None:
    """Raise one UserError line naming the first word the tokenizer cannot place (before any model loads)."""
    try:
        _placements(spec, tokenizer)
    except UserError as exc:
        raise UserError(f"{name + ': ' if name else ''}{exc}") from None


def word_representations(model, tokenizer, spec: EmbeddingSpec, layer: int = -1, batch_size: int = 32,
                         device=None, forward=plain_forward) -> dict[str, np.ndarray]:
    """{word: float64 array (n_templates, hidden)}: mean of hidden_states[layer] over the word's tokens.

    Sentences are right-padded, so a causal model's hidden states at the word are those of the unpadded
    sentence. `layer` indexes `output_hidden_states` (0 = token embeddings, -1 = last layer). `forward(module,
    **inputs)` runs the model (`distill.eval.shared_prefix` may start it past shared blocks).
    """
    import torch

    from distill.models import right_padded

    place = _placements(spec, tokenizer)
    items = [(w, t, ids, pos) for w, rows in place.items() for t, (ids, pos) in enumerate(rows)]
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0))
    if not -(n_layers + 1) <= layer <= n_layers:
        raise UserError(f"--lens-layer {layer} is out of range for a model with {n_layers} layers "
                        f"(use 0..{n_layers} or -1 for the last)")
    device = device or next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vecs: dict[tuple[str, int], np.ndarray] = {}
    # the backbone alone: its hidden states are all the lens needs, and the LM head's (tokens x vocab)
    # logits would cost a fifth of the compute of a 135M model for nothing
    backbone = getattr(model, "base_model", model)
    with torch.inference_mode():
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            ids, mask = right_padded([row for _, _, row, _ in chunk], pad)
            hs = forward(backbone, input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
            h = hs.hidden_states[layer].float().cpu().numpy().astype(np.float64)
            for r, (w, t, _, pos) in enumerate(chunk):
                vecs[(w, t)] = h[r, pos].mean(axis=0)
    return {w: np.stack([vecs[(w, t)] for t in range(len(spec.templates))]) for w in place}


# ------------------------------------------------------------------------------------------ statistics


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1.0)


def association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b), for each row w of `w` (n, h)."""
    w, a, b = _unit(w), _unit(a), _unit(b)
    return (w @ a.T).mean(axis=1) - (w @ b.T).mean(axis=1)


def effect_size(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """Caliskan et al.'s d = (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w) (sample std, ddof 1).

    When every s(w) is equal the association has no spread and no difference: d is defined as 0 then (a
    model whose attribute words coincide has exactly this)."""
    pooled = np.concatenate([s_x, s_y])
    sd = float(np.std(pooled, ddof=1))
    diff = float(np.mean(s_x) - np.mean(s_y))
    if sd <= 1e-12 * max(1.0, float(np.max(np.abs(pooled)))):
        return 0.0
    return diff / sd


def effect_size_variance(d: float, n_x: int, n_y: int) -> float:
    """Sampling variance of a standardised mean difference (Hedges & Olkin): (nx + ny)/(nx ny) + d^2 / (2 (nx + ny)).

    Used as the within-template variance v_i in CEAT's random-effects model (an approximation: d here is
    standardised by the pooled spread of X u Y, as Caliskan's d is)."""
    return (n_x + n_y) / (n_x * n_y) + d * d / (2 * (n_x + n_y))


def permutation_p(s_x: np.ndarray, s_y: np.ndarray, n_perm: int, seed: int) -> float:
    """Two-sided permutation p-value of d: share of random equal-size re-partitions of X u Y whose |d| is at
    least the observed |d|, as (1 + count) / (1 + n_perm) so it is never 0. Caliskan's test is one-sided;
    two-sided is used because a debiased model may overshoot into the anti-stereotype."""
    pooled = np.concatenate([s_x, s_y])
    nx = len(s_x)
    obs = abs(effect_size(s_x, s_y))
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_perm, len(pooled))), axis=1)
    xs, ys = pooled[perms[:, :nx]], pooled[perms[:, nx:]]
    sd = np.std(pooled, ddof=1)  # the pooled set, hence its std, is the same under every re-partition
    if sd <= 1e-12 * max(1.0, float(np.max(np.abs(pooled)))):
        return 1.0
    ds = np.abs(xs.mean(axis=1) - ys.mean(axis=1)) / sd
    return float((1 + np.sum(ds >= obs - 1e-12)) / (1 + n_perm))


def random_effects(d: np.ndarray, v: np.ndarray) -> dict[str, float]:
    """CEAT's random-effects combination (DerSimonian-Laird) of effect sizes d_i with variances v_i.

    w_i = 1/v_i; Q = sum w_i (d_i - sum w d / sum w)^2; tau^2 = max(0, (Q - (N - 1)) / (sum w - sum w^2 / sum w));
    w*_i = 1/(v_i + tau^2); combined = sum w*_i d_i / sum w*_i; se = sqrt(1 / sum w*_i);
    p = 2 (1 - Phi(|combined| / se)); 95% interval combined +- 1.96 se.
    """
    d, v = np.asarray(d, float), np.asarray(v, float)
    w = 1.0 / v
    fixed = float(np.sum(w * d) / np.sum(w))
    q = float(np.sum(w * (d - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w * w) / np.sum(w))
    tau2 = max(0.0, (q - (len(d) - 1)) / c) if c > 0 else 0.0
    ws = 1.0 / (v + tau2)
    ces = float(np.sum(ws * d) / np.sum(ws))
    se = float(math.sqrt(1.0 / np.sum(ws)))
    p = math.erfc(abs(ces) / se / math.sqrt(2)) if se > 0 else (0.0 if ces else 1.0)
    return {"effect_size": ces, "se": se, "p": float(p), "tau2": tau2, "ci": [ces - 1.96 * se, ces + 1.96 * se]}


def _test_associations(reps: dict[str, np.ndarray], test: AssociationTest) -> tuple[np.ndarray, np.ndarray]:
    """s(w) per template for X and Y: arrays (n_templates, |X|) and (n_templates, |Y|).

    The attributes of one template are compared with the targets of the same template (CEAT draws every
    word's context from one sample), so a template is one replicate of the whole test."""
    n_t = next(iter(reps.values())).shape[0]
    sx = np.zeros((n_t, len(test.x)))
    sy = np.zeros((n_t, len(test.y)))
    for t in range(n_t):
        a = np.stack([reps[w][t] for w in test.a])
        b = np.stack([reps[w][t] for w in test.b])
        sx[t] = association(np.stack([reps[w][t] for w in test.x]), a, b)
        sy[t] = association(np.stack([reps[w][t] for w in test.y]), a, b)
    return sx, sy


def template_effects(sx: np.ndarray, sy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-template effect sizes d_t and their variances v_t from per-template associations."""
    nx, ny = sx.shape[1], sy.shape[1]
    d = np.array([effect_size(sx[t], sy[t]) for t in range(sx.shape[0])])
    return d, np.array([effect_size_variance(x, nx, ny) for x in d])


def combine_tests(per_test: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Random-effects combination over every (test, template) effect size: the lens's one number."""
    d = np.concatenate([s[0] for s in per_test])
    v = np.concatenate([s[1] for s in per_test])
    return random_effects(d, v)


def embedding_lens(reps: dict[str, np.ndarray], spec: EmbeddingSpec, n_perm: int = 10000, seed: int = 0) -> dict:
    """The lens's results.json entry: {"tests": [...], "combined_effect_size", "combined_p", "combined_ci", ...}.

    Per test: `effect_size` is Caliskan's d on associations averaged over templates and `p` its permutation
    p-value; `ceat_effect_size`/`ceat_p` are the random-effects combination of the per-template d's."""
    tests, per_test = [], []
    for i, test in enumerate(spec.tests):
        sx, sy = _test_associations(reps, test)
        d_t, v_t = template_effects(sx, sy)
        per_test.append((d_t, v_t))
        mx, my = sx.mean(axis=0), sy.mean(axis=0)
        ceat = random_effects(d_t, v_t)
        tests.append({"name": test.name, "effect_size": effect_size(mx, my), "p": permutation_p(mx, my, n_perm, seed + i),
                      "ceat_effect_size": ceat["effect_size"], "ceat_p": ceat["p"], "ceat_tau2": ceat["tau2"],
                      "per_template": [float(x) for x in d_t]})
    comb = combine_tests(per_test)
    return {"tests": tests, "combined_effect_size": comb["effect_size"], "combined_p": comb["p"],
            "combined_ci": comb["ci"], "combined_se": comb["se"], "combined_tau2": comb["tau2"],
            "n_templates": len(spec.templates), "n_permutations": n_perm}


def associations_for(reps: dict[str, np.ndarray], spec: EmbeddingSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per test, the per-template associations (sx, sy) (see `unit_effects`)."""
    return [_test_associations(reps, t) for t in spec.tests]


def word_effects(assoc: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The per-cluster figures of the embedding lens for `distill.eval.paired.paired_test`: one per target word.

    With |X| = |Y| = n, Caliskan's d on template-averaged associations s(w) splits into word terms:
    d = (mean_x s(x) - mean_y s(y)) / sd = mean_{w in X u Y} f(w), f(w) = 2 sign(w) s(w) / sd, sign +1 on X
    and -1 on Y, sd the test's pooled std (0 spread: f = 0, as d is then 0). Words are the units the
    association test itself permutes, so they are the clusters: the mean over a test's words is its d, and
    over all words (strata = tests) the mean of the tests' d. Tests with |X| != |Y| weight X and Y by 1/|X|
    and 1/|Y| in the same way (f(x) = (|X|+|Y|)/|X| s(x)/sd)."""
    f, strata = [], []
    for (sx, sy), name in zip(assoc, names, strict=True):
        mx, my = sx.mean(axis=0), sy.mean(axis=0)
        pooled = np.concatenate([mx, my])
        sd = float(np.std(pooled, ddof=1))
        n = len(pooled)
        if sd <= 1e-12 * max(1.0, float(np.max(np.abs(pooled)))):
            f.extend([0.0] * n)
        else:
            f.extend(list(n / len(mx) * mx / sd) + list(-n / len(my) * my / sd))
        strata.extend([name] * n)
    return np.array(f), strata
