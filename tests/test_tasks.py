"""Tests for the built-in task (inpo.tasks): tokenizer, game, judge, exact style distribution, SFT cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from transformers import AutoModelForCausalLM, AutoTokenizer

from inpo.errors import InpoError
from inpo.judges.base import Judge, matrix_from_prob
from inpo.tasks import BuiltinTask, BuiltinTaskConfig, build_reference, load_reference, reference_dir
from inpo.tasks import reference as reference_module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model runs much faster on one thread on a busy 2-core machine (see torch_threads)."""
    with reference_module.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def task() -> BuiltinTask:
    return BuiltinTask()


@pytest.fixture(scope="module")
def tok(task):
    return task.make_tokenizer()


def lp_equilibrium(p: np.ndarray) -> tuple[np.ndarray, float]:
    """Maximin strategy of the row player: max v s.t. (pi^T P)_j >= v for all j, pi in the simplex."""
    n = p.shape[0]
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-p.T, np.ones((n, 1))])
    a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0],
                  bounds=[(0, None)] * n + [(None, None)], method="highs")
    assert res.status == 0
    return res.x[:n], res.x[-1]


def equilibrium_box(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of each coordinate over the equilibrium set {pi : pi^T P >= 1/2} (equal iff unique)."""
    n = p.shape[0]
    lo, hi = np.zeros(n), np.zeros(n)
    for k in range(n):
        for sign, out in ((1.0, lo), (-1.0, hi)):
            c = np.zeros(n)
            c[k] = sign
            res = linprog(c, A_ub=-p.T, b_ub=-0.5 * np.ones(n), A_eq=np.ones((1, n)), b_eq=[1.0],
                          bounds=[(0, None)] * n, method="highs")
            assert res.status == 0
            out[k] = res.x[k]
    return lo, hi


def gap(p: np.ndarray, pi: np.ndarray) -> float:
    """Duality gap max_i (P pi)_i - min_j (pi^T P)_j (DESIGN.md section 3)."""
    return float((p @ pi).max() - (pi @ p).min())


# ------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_split(task, tok, tmp_path):
    pairs = task.sft_pairs()[:50]
    for prompt, response in pairs:
        p_ids = tok(prompt).input_ids
        r_ids = tok(response, add_special_tokens=False).input_ids
        assert p_ids[0] == tok.bos_token_id and tok.unk_token_id not in p_ids + r_ids
        assert tok(prompt + " " + response).input_ids == p_ids + r_ids
        full = p_ids + r_ids + [tok.eos_token_id]
        assert tok.decode(full, skip_special_tokens=True) == prompt + " " + response
        assert tok.decode(r_ids + [tok.eos_token_id], skip_special_tokens=True) == response
    assert len(tok) == len(task.vocab)
    # every word of the vocabulary is one token; padding side settable, both sides pad with <pad>
    assert len(tok(" ".join(task.vocab[4:]), add_special_tokens=False).input_ids) == len(task.vocab) - 4
    for side in ("left", "right"):
        t2 = task.make_tokenizer(padding_side=side)
        enc = t2(["topic0 :", "topic1 w1 w2 :"], padding=True)
        assert enc.input_ids[0] == ([0, 0, 1, 7, 10] if side == "left" else [1, 7, 10, 0, 0])
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    prompt, response = pairs[0]
    assert loaded(prompt).input_ids == tok(prompt).input_ids
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.padding_side == "left"


# ------------------------------------------------------------------------------------------- game
def test_game_structure_and_hand_values(task):
    g = task.games.numpy()
    m = len(task.styles)
    assert g.shape == (3, m + 1, m + 1) and task.games.dtype == torch.float64
    for p in g:
        assert np.array_equal(p + p.T, np.ones_like(p))  # bit-exact
        assert np.all(np.diag(p) == 0.5)
        assert np.all(p[m, :m] == 0.0) and np.all(p[:m, m] == 1.0)
    # topic 0 by hand: pi* = (1, 2, 4)/7, A = 0.7 [pi*]_x  ->  paper beats rock 0.9, rock beats
    # scissors 0.7, scissors beats paper 0.6
    hand = np.array([[0.5, 0.1, 0.7], [0.9, 0.5, 0.4], [0.3, 0.6, 0.5]])
    np.testing.assert_allclose(g[0, :m, :m], hand, atol=1e-12)
    np.testing.assert_allclose(hand @ np.array([1, 2, 4]) / 7, 0.5, atol=1e-12)


@pytest.mark.parametrize("num_styles", [3, 5])
def test_equilibrium_interior_unique_far_from_sft(num_styles):
    task = BuiltinTask(BuiltinTaskConfig(num_styles=num_styles, n_sft_prompts=8))
    for t in range(task.cfg.num_topics):
        p = task.games[t].numpy()
        pi_lp, value = lp_equilibrium(p)
        assert value == pytest.approx(0.5, abs=1e-9)
        np.testing.assert_allclose(pi_lp, task.equilibria[t].numpy(), atol=1e-7)
        lo, hi = equilibrium_box(p)
        np.testing.assert_allclose(lo, hi, atol=1e-7)  # unique
        styles = pi_lp[:num_styles]
        assert styles.min() > 0.03 and pi_lp[num_styles] < 1e-9  # interior on styles, none excluded
        assert styles.max() - styles.min() > 0.4  # far from uniform
        assert gap(p, pi_lp) < 1e-9
        pi_sft = task.sft_distributions[t].numpy()
        assert 0.5 * np.abs(pi_sft - pi_lp).sum() > 0.5  # TV distance
        assert gap(p, pi_sft) > 0.3
        # the SFT favourite is the least-played equilibrium style
        assert pi_sft.argmax() == styles.argmin()
    if num_styles == 3:  # gap of pi_sft = (0.7, 0.2, 0.1) in topic 0 by hand: 2 * (0.77 - 0.5)
        assert gap(task.games[0].numpy(), task.sft_distributions[0].numpy()) == pytest.approx(0.54)


def test_config_validation():
    with pytest.raises(InpoError, match="num_styles"):
        BuiltinTaskConfig(num_styles=4)
    with pytest.raises(InpoError, match="max_margin"):
        BuiltinTaskConfig(max_margin=0.7)
    with pytest.raises(InpoError, match="sft_steps"):
        BuiltinTaskConfig(sft_steps=2.5)
    with pytest.raises(InpoError, match="prompt_words"):
        BuiltinTaskConfig(prompt_words=[1, 2, 3])
    from_yaml = BuiltinTaskConfig(prompt_words=[2, 4], max_margin=0.4, sft_lr=1)  # YAML-style values
    assert from_yaml.prompt_words == (2, 4) and isinstance(from_yaml.sft_lr, float)
    assert from_yaml.config_hash() == BuiltinTaskConfig(sft_lr=1.0).config_hash()
    assert BuiltinTaskConfig().config_hash() != BuiltinTaskConfig(seed=1).config_hash()
    assert BuiltinTaskConfig().config_hash() == BuiltinTaskConfig().config_hash()


# ------------------------------------------------------------------------------------------- data
def test_prompts_and_sft_data(task):
    cfg = task.cfg
    assert len(task.train_prompts) == cfg.n_train_prompts and len(task.eval_prompts) == cfg.n_eval_prompts
    assert not set(task.train_prompts) & set(task.eval_prompts)
    assert not set(task.sft_prompts) & (set(task.train_prompts) | set(task.eval_prompts))
    assert BuiltinTask().train_prompts == task.train_prompts  # seeded
    pairs = task.sft_pairs()
    assert pairs == BuiltinTask().sft_pairs()
    assert len(pairs) == cfg.n_sft_prompts * cfg.sft_responses_per_prompt
    counts = np.zeros((cfg.num_topics, len(task.styles) + 1))
    for prompt, response in pairs:
        counts[task.topic_of(prompt), task.style_of(response)] += 1
        n_free = len(response.split()) - 1
        assert cfg.response_words[0] <= n_free <= cfg.response_words[1]
    freq = counts / counts.sum(1, keepdims=True)
    slots = counts.sum(1, keepdims=True)
    assert np.all(np.abs(freq - task.sft_distributions.numpy()) <= 1.0 / slots)
    np.testing.assert_allclose(task.sft_distribution(task.eval_prompts[:2]).sum(-1).numpy(), 1.0)


# ------------------------------------------------------------------------------------------- judge
def test_judge_antisymmetric_and_matrix(task):
    judge = task.judge()
    assert isinstance(judge, Judge)
    rng = np.random.default_rng(0)
    words = [*task.styles, "w1", "w7", ""]
    responses = [" ".join([words[i], "w3"]).strip() for i in rng.integers(0, len(words), size=40)]
    prompts = [task.eval_prompts[i] for i in rng.integers(0, len(task.eval_prompts), size=40)]
    b = responses[::-1]
    pab, pba = judge.prob(prompts, responses, b), judge.prob(prompts, b, responses)
    assert torch.equal(pab + pba, torch.ones(40, dtype=torch.float64))
    for i in range(40):
        t, sa, sb = task.topic_of(prompts[i]), task.style_of(responses[i]), task.style_of(b[i])
        assert pab[i] == task.games[t, sa, sb]
    assert task.style_of("") == len(task.styles) and task.style_of("w3 rock") == len(task.styles)
    assert task.style_of("scissors") == 2
    mat = judge.matrix(prompts[0], responses[:12])
    assert torch.equal(mat + mat.T, torch.ones(12, 12, dtype=torch.float64))
    assert torch.equal(mat, matrix_from_prob(judge, prompts[0], responses[:12]))
    with pytest.raises(InpoError, match="topic"):
        judge.prob(["hello :"], ["rock"], ["paper"])
    with pytest.raises(InpoError, match="topic"):
        task.topic_of("topic9 w1 :")


# ------------------------------------------------------------------------------------------- style distribution
def test_style_distribution_exact(task, tok):
    model = task.make_model(tok, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the random model away from uniform so the check has teeth
        for param in model.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    prompts = task.eval_prompts[:10]
    assert len({len(p.split()) for p in prompts}) > 1  # left padding is exercised
    style_ids = tok.convert_tokens_to_ids(task.styles)
    for temperature in (1.0, 0.5):
        pi = task.style_distribution(model, tok, prompts, temperature=temperature)
        assert pi.shape == (10, len(task.styles) + 1) and pi.dtype == torch.float64
        np.testing.assert_allclose(pi.sum(-1).numpy(), 1.0, atol=1e-12)
        for i, prompt in enumerate(prompts):
            with torch.no_grad():
                logits = model(torch.tensor([tok(prompt).input_ids])).logits[0, -1].double()
            full = torch.softmax(logits / temperature, -1)
            np.testing.assert_allclose(pi[i, :-1].numpy(), full[style_ids].numpy(), atol=1e-6)
            np.testing.assert_allclose(pi[i, -1].item(), 1.0 - full[style_ids].sum().item(), atol=1e-6)
    assert pi[:, :-1].max() > 0.05 and pi[:, :-1].std(0).min() > 1e-3  # non-trivial, prompt-dependent
    games = task.game_for_prompts(prompts)
    assert games.shape == (10, 4, 4) and torch.equal(games[0], task.games[task.topic_of(prompts[0])])


# ------------------------------------------------------------------------------------------- SFT + cache
@pytest.fixture(scope="module")
def ref_dir(task, tmp_path_factory):
    return build_reference(task, tmp_path_factory.mktemp("cache"), progress=False)


def test_build_reference_matches_sft_and_caches(task, ref_dir, monkeypatch):
    assert ref_dir == reference_dir(task, ref_dir.parent) and (ref_dir / "model.safetensors").is_file()
    meta = json.loads((ref_dir / "task.json").read_text())
    assert meta["config_hash"] == task.cfg.config_hash()
    model = AutoModelForCausalLM.from_pretrained(ref_dir)
    tok = AutoTokenizer.from_pretrained(ref_dir)
    pi = task.style_distribution(model, tok, task.eval_prompts)
    target = task.sft_distribution(task.eval_prompts)
    # measured for the default config, seeds 0-5: max |err| <= 0.04, mean TV <= 0.02
    assert (pi - target).abs().max() < 0.06
    assert 0.5 * (pi - target).abs().sum(-1).mean() < 0.03
    assert meta["sft"]["max_abs_err"] == pytest.approx(float((pi - target).abs().max()), abs=1e-6)
    # second call reuses the cache: training must not run
    monkeypatch.setattr(reference_module, "train_sft", lambda *a, **k: pytest.fail("retrained"))
    assert build_reference(task, ref_dir.parent, progress=False) == ref_dir
    with pytest.raises(InpoError, match="config.json"):
        load_reference(ref_dir.parent / "missing")


def test_sampled_styles_match_style_distribution(task, ref_dir):
    """Batched left-padded sampling (the loop's path) draws first words with the exact probabilities."""
    model, tok = load_reference(ref_dir)
    prompts = task.eval_prompts[:4]
    n = 250
    pi = task.style_distribution(model, tok, prompts)
    enc = tok([p for p in prompts for _ in range(n)], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**enc, do_sample=True, max_new_tokens=task.max_new_tokens, top_k=0, top_p=1.0)
    responses = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    actions = torch.tensor([task.style_of(r) for r in responses]).view(len(prompts), n)
    freq = torch.nn.functional.one_hot(actions, task.num_actions).double().mean(1)
    sd = (pi * (1 - pi) / n).sqrt()
    assert ((freq - pi).abs() <= 4 * sd + 1e-3).all()
