"""The built-in task: a tiny causal LM whose behaviour maps onto a finite preference game.

DESIGN.md section 4. Words (one token each, WordLevel tokenizer):

* special: ``<pad> <bos> <eos> <unk>``; styles: ``rock paper scissors`` (M=3; ``lizard spock`` and then
  ``style5 ...`` for larger M); topics ``topic0 .. topic{T-1}``; the separator ``:``; fillers ``w0 ..``.
* prompt: ``"topic1 w3 w17 w8 :"`` (a topic word, 2-4 random fillers, the separator);
* response: ``"paper w4 w9"`` (a style word, 1-5 random fillers), followed by ``<eos>``.

Sequence convention (what the training loop must do):
``prompt_ids = tok(prompt).input_ids`` (prepends ``<bos>``);
``response_ids = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]``;
the full sequence is ``prompt_ids + response_ids``, which equals
``tok(prompt + " " + response).input_ids + [eos]``. ``tok.decode(ids, skip_special_tokens=True)``
gives the words back joined by single spaces.

The action of a response is its first word: style ``i`` if it is the i-th style word, else "none"
(index M; also for an empty response). The ground-truth judge is the per-topic game of
:mod:`inpo.tasks.game`; since the first response token decides the action, the exact action
distribution of an LM policy is the softmax of its next-token logits after the prompt, and the duality
gap of the LM policy is ``duality_gap(game_for_prompts(x), style_distribution(model, tok, x))``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from inpo.errors import InpoError
from inpo.tasks.game import geometric_profile, skewed_profile, style_game, with_none

TASK_VERSION = 1  # bump when data generation / training changes, to invalidate cached references
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
STYLE_NAMES = ("rock", "paper", "scissors", "lizard", "spock")
SEPARATOR = ":"
_TOPIC_RE = re.compile(r"^topic(\d+)$")


@dataclass(frozen=True)
class BuiltinTaskConfig:
    """Everything that defines the built-in task; its hash keys the cached SFT reference.

    Game: per topic t, equilibrium ``pi*_t = roll(geometric_profile(M, nash_ratio), t)`` (M=3: (1,2,4)/7
    rolled) and margins scaled so the largest win probability is ``1/2 + max_margin``.
    SFT data: ``pi_sft_t = roll(skewed_profile(M, sft_top_prob), t)`` (M=3: (0.7, 0.2, 0.1) rolled), so
    the SFT favourite of each topic is that topic's least-played equilibrium style; a fraction
    ``sft_none_prob`` of SFT responses starts with a filler word ("none").
    """

    seed: int = 0
    num_styles: int = 3
    num_topics: int = 3
    num_fillers: int = 32
    prompt_words: tuple[int, int] = (2, 4)  # min, max filler words in a prompt
    response_words: tuple[int, int] = (1, 5)  # min, max free words after the style word
    n_train_prompts: int = 96
    n_eval_prompts: int = 48
    n_sft_prompts: int = 1024
    nash_ratio: float = 2.0
    max_margin: float = 0.4
    sft_top_prob: float = 0.7
    sft_none_prob: float = 0.0
    sft_responses_per_prompt: int = 4
    sft_steps: int = 300
    sft_batch_size: int = 64
    sft_lr: float = 1e-2
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 64

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> None:
            raise InpoError(f"task config: field '{field}' {why}")

        # YAML gives lists for the (min, max) pairs and may give ints for floats: coerce, else reject
        for f in fields(self):
            value, default = getattr(self, f.name), f.default
            if isinstance(default, tuple):
                if not (isinstance(value, list | tuple) and len(value) == 2
                        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
                    bad(f.name, f"must be a pair of integers [min, max] (got {value!r})")
                object.__setattr__(self, f.name, tuple(value))
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    bad(f.name, f"must be a number (got {value!r})")
                object.__setattr__(self, f.name, float(value))
            elif isinstance(value, bool) or not isinstance(value, int):
                bad(f.name, f"must be an integer (got {value!r})")
        if self.num_styles < 3 or self.num_styles % 2 == 0:
            bad("num_styles", f"must be odd and >= 3 (got {self.num_styles}): an even-size skew game "
                "has no unique interior equilibrium")
        if self.num_topics < 1:
            bad("num_topics", f"must be >= 1 (got {self.num_topics})")
        if self.num_fillers < 2:
            bad("num_fillers", f"must be >= 2 (got {self.num_fillers})")
        for name in ("prompt_words", "response_words"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                bad(name, f"must be (min, max) with 0 <= min <= max (got {(lo, hi)})")
        if self.prompt_words[1] + 3 + 1 + self.response_words[1] + 1 > self.max_position_embeddings:
            bad("max_position_embeddings", "is too small for the longest prompt + response")
        for name in ("n_train_prompts", "n_eval_prompts", "n_sft_prompts", "sft_responses_per_prompt", "sft_batch_size",
                     "hidden_size", "num_layers", "num_heads", "intermediate_size"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1 (got {getattr(self, name)})")
        if self.sft_steps < 0:
            bad("sft_steps", f"must be >= 0 (got {self.sft_steps})")
        if self.hidden_size % self.num_heads:
            bad("num_heads", f"must divide hidden_size {self.hidden_size} (got {self.num_heads})")
        if not self.nash_ratio > 1.0:
            bad("nash_ratio", f"must be > 1 so the equilibrium is not uniform (got {self.nash_ratio})")
        if not 0.0 < self.max_margin <= 0.5:
            bad("max_margin", f"must be in (0, 0.5] (got {self.max_margin})")
        if not 0.0 < self.sft_top_prob < 1.0:
            bad("sft_top_prob", f"must be in (0, 1) (got {self.sft_top_prob})")
        if not 0.0 <= self.sft_none_prob < 1.0:
            bad("sft_none_prob", f"must be in [0, 1) (got {self.sft_none_prob})")
        if not self.sft_lr > 0.0:
            bad("sft_lr", f"must be > 0 (got {self.sft_lr})")

    def config_hash(self) -> str:
        """16 hex digits of sha256 over the config fields and ``TASK_VERSION`` (the cache key)."""
        blob = json.dumps({"task_version": TASK_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def style_names(m: int) -> list[str]:
    return [STYLE_NAMES[i] if i < len(STYLE_NAMES) else f"style{i}" for i in range(m)]


def _sample_prompts(rng: np.random.Generator, cfg: BuiltinTaskConfig, n: int, taken: set[str]) -> list[str]:
    """``n`` distinct prompts not in ``taken``, topics balanced (i % T) then shuffled."""
    out: list[str] = []
    topics = [i % cfg.num_topics for i in range(n)]
    rng.shuffle(topics)
    for t in topics:
        for _ in range(1000):
            k = int(rng.integers(cfg.prompt_words[0], cfg.prompt_words[1] + 1))
            words = [f"w{j}" for j in rng.integers(0, cfg.num_fillers, size=k)]
            p = " ".join([f"topic{t}", *words, SEPARATOR])
            if p not in taken:
                break
        else:
            raise InpoError("task config: too few distinct prompts; raise num_fillers or prompt_words")
        taken.add(p)
        out.append(p)
    return out


def _largest_remainder(probs: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to ``n`` closest to ``probs * n`` (Hamilton's method, ties by index)."""
    raw = probs * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


class TaskJudge:
    """Ground-truth judge: ``P(a > b | x) = P_topic(x)[style(a), style(b)]`` (exactly antisymmetric).

    Implements :class:`inpo.judges.base.Judge`; outputs float64.
    """

    def __init__(self, task: BuiltinTask):
        self.task = task
        self.games = task.games  # [T, M+1, M+1] float64

    def _actions(self, responses: list[str]) -> torch.Tensor:
        return torch.tensor([self.task.style_of(r) for r in responses], dtype=torch.long)

    def prob(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> torch.Tensor:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise InpoError(f"judge: prompts/responses_a/responses_b lengths differ "
                            f"({len(prompts)}, {len(responses_a)}, {len(responses_b)})")
        t = torch.tensor([self.task.topic_of(p) for p in prompts], dtype=torch.long)
        return self.games[t, self._actions(responses_a), self._actions(responses_b)]

    def matrix(self, prompt: str, responses: list[str]) -> torch.Tensor:
        a = self._actions(responses)
        return self.games[self.task.topic_of(prompt)][a[:, None], a[None, :]]


class BuiltinTask:
    """The built-in task: vocabulary, prompts, game, SFT data, tiny Llama, exact style distribution."""

    def __init__(self, cfg: BuiltinTaskConfig | None = None):
        self.cfg = cfg = cfg if cfg is not None else BuiltinTaskConfig()
        m, n_t = cfg.num_styles, cfg.num_topics
        self.styles: list[str] = style_names(m)
        self.topics: list[str] = [f"topic{t}" for t in range(n_t)]
        self.fillers: list[str] = [f"w{j}" for j in range(cfg.num_fillers)]
        self.vocab: list[str] = [*SPECIAL_TOKENS, *self.styles, *self.topics, SEPARATOR, *self.fillers]
        self._style_index = {s: i for i, s in enumerate(self.styles)}

        nash = geometric_profile(m, cfg.nash_ratio)
        sft = skewed_profile(m, cfg.sft_top_prob)
        eq, pis, games = [], [], []
        for t in range(n_t):
            pi_star = np.roll(nash, t)
            eq.append(np.append(pi_star, 0.0))
            pis.append(np.append((1.0 - cfg.sft_none_prob) * np.roll(sft, t), cfg.sft_none_prob))
            games.append(with_none(style_game(pi_star, cfg.max_margin)))
        #: per-topic equilibrium over the M+1 actions ("none" last, mass 0), [T, M+1] float64
        self.equilibria = torch.tensor(np.stack(eq))
        #: per-topic SFT action distribution, [T, M+1] float64
        self.sft_distributions = torch.tensor(np.stack(pis))
        #: per-topic game P[t, i, j] = P(action i > action j), [T, M+1, M+1] float64
        self.games = torch.tensor(np.stack(games))

        rng = np.random.default_rng(cfg.seed)
        taken: set[str] = set()
        self.train_prompts: list[str] = _sample_prompts(rng, cfg, cfg.n_train_prompts, taken)
        self.eval_prompts: list[str] = _sample_prompts(rng, cfg, cfg.n_eval_prompts, taken)
        #: prompts of the SFT data, disjoint from the train and eval prompts
        self.sft_prompts: list[str] = _sample_prompts(rng, cfg, cfg.n_sft_prompts, taken)

    # ----------------------------------------------------------------- parsing
    @property
    def num_actions(self) -> int:
        """M + 1: the M styles and "none" (last)."""
        return len(self.styles) + 1

    @property
    def max_new_tokens(self) -> int:
        """Longest response in tokens: style word + max free words + ``<eos>``."""
        return 1 + self.cfg.response_words[1] + 1

    def topic_of(self, prompt: str) -> int:
        """Topic index from the prompt's first word ``topic<k>``; InpoError if absent/out of range."""
        words = prompt.split()
        match = _TOPIC_RE.match(words[0]) if words else None
        if match is None or int(match.group(1)) >= self.cfg.num_topics:
            raise InpoError(f"built-in task: prompt {prompt[:60]!r} does not start with a topic word "
                            f"topic0..topic{self.cfg.num_topics - 1}")
        return int(match.group(1))

    def fresh_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        """``n`` new prompts from the task's generator (topics balanced), disjoint from its train, eval and
        SFT prompts: e.g. for preference data a judge is trained on without seeing the eval prompts."""
        taken = set(self.train_prompts) | set(self.eval_prompts) | set(self.sft_prompts)
        return _sample_prompts(rng, self.cfg, n, taken)

    def style_of(self, response: str) -> int:
        """Action of a response: index of its first word among the styles, or M ("none")."""
        words = response.split(maxsplit=1)
        return self._style_index.get(words[0], len(self.styles)) if words else len(self.styles)

    # ----------------------------------------------------------------- game
    def judge(self) -> TaskJudge:
        return TaskJudge(self)

    def game_for_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``[N, M+1, M+1]`` float64: the game of each prompt's topic."""
        return self.games[[self.topic_of(p) for p in prompts]].clone()

    def equilibrium_for_prompts(self, prompts: list[str]) -> torch.Tensor:
        """``[N, M+1]`` float64: the (unique) Nash equilibrium of each prompt's game."""
        return self.equilibria[[self.topic_of(p) for p in prompts]].clone()

    def sft_distribution(self, prompts: list[str]) -> torch.Tensor:
        """``[N, M+1]`` float64: the action distribution ``pi_sft`` the SFT data was drawn from."""
        return self.sft_distributions[[self.topic_of(p) for p in prompts]].clone()

    # ----------------------------------------------------------------- data
    def sft_pairs(self) -> list[tuple[str, str]]:
        """(prompt, response) pairs: ``sft_responses_per_prompt`` per SFT prompt, seeded.

        The SFT prompts (``self.sft_prompts``) are disjoint from the train/eval prompts and many, so
        the tiny model learns the topic -> pi_sft map instead of memorizing prompts. Per topic, the
        action counts over all its (prompt, response) slots are the largest-remainder rounding of
        ``pi_sft * n_slots``, shuffled over the slots: the data frequencies equal pi_sft up to 1/n_slots.
        """
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 1])
        m, r = len(self.styles), cfg.sft_responses_per_prompt
        topics = np.array([self.topic_of(p) for p in self.sft_prompts], dtype=np.int64)
        actions = np.zeros((len(self.sft_prompts), r), dtype=np.int64)
        for t in range(cfg.num_topics):
            rows = np.flatnonzero(topics == t)
            counts = _largest_remainder(self.sft_distributions[t].numpy(), rows.size * r)
            slots = np.repeat(np.arange(m + 1), counts)
            rng.shuffle(slots)
            actions[rows] = slots.reshape(rows.size, r)
        pairs: list[tuple[str, str]] = []
        for prompt, row in zip(self.sft_prompts, actions, strict=True):
            for a in row:
                k = int(rng.integers(cfg.response_words[0], cfg.response_words[1] + 1))
                words = [self.fillers[j] for j in rng.integers(0, cfg.num_fillers, size=k)]
                if a < m:
                    words = [self.styles[a], *words]
                elif not words:  # "none" with zero free words would be empty; keep one filler
                    words = [self.fillers[int(rng.integers(0, cfg.num_fillers))]]
                pairs.append((prompt, " ".join(words)))
        return pairs

    # ----------------------------------------------------------------- model
    def make_tokenizer(self, padding_side: str = "left") -> PreTrainedTokenizerFast:
        """Word-level tokenizer (``tokenizers`` WordLevel + WhitespaceSplit); ``tok(text)`` prepends <bos>."""
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        vocab = {w: i for i, w in enumerate(self.vocab)}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        bos = vocab["<bos>"]
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
            unk_token="<unk>", padding_side=padding_side,
            model_max_length=self.cfg.max_position_embeddings,
        )

    def model_config(self, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
        cfg = self.cfg
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )

    def make_model(self, tokenizer: PreTrainedTokenizerFast, seed: int | None = None) -> PreTrainedModel:
        """Random-init tiny ``LlamaForCausalLM`` (seeded; the global torch RNG is left untouched)."""
        config = self.model_config(tokenizer)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed if seed is None else seed)
            model = LlamaForCausalLM(config)
        gen = model.generation_config
        gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
            tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        return model

    @torch.no_grad()
    def style_distribution(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast,
                           prompts: list[str], temperature: float = 1.0,
                           batch_size: int = 512) -> torch.Tensor:
        """Exact action distribution of the policy, ``[N, M+1]`` float64 (rows sum to 1).

        ``pi(style i | x) = softmax(logits(x) / temperature)[token(style i)]`` at the position after the
        prompt; ``pi(none | x) = 1 - sum_i pi(style i | x)`` (EOS, fillers, ... as first token).
        Prompts are left-padded here (independently of ``tokenizer.padding_side``) with
        ``position_ids = cumsum(mask) - 1``, so each row equals the unpadded forward.
        """
        if temperature <= 0:
            raise InpoError(f"style_distribution: temperature must be > 0 (got {temperature})")
        style_ids = torch.tensor(tokenizer.convert_tokens_to_ids(self.styles), dtype=torch.long)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        try:
            for start in range(0, len(prompts), batch_size):
                enc = [tokenizer(p).input_ids for p in prompts[start:start + batch_size]]
                width = max(len(e) for e in enc)
                ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(enc), width), dtype=torch.long)
                for i, e in enumerate(enc):
                    ids[i, width - len(e):] = torch.tensor(e)
                    mask[i, width - len(e):] = 1
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=pos.to(device)).logits[:, -1]
                probs = torch.softmax(logits.double().cpu() / temperature, dim=-1)[:, style_ids]
                out.append(torch.cat([probs, (1.0 - probs.sum(-1, keepdim=True)).clamp(min=0.0)], dim=-1))
        finally:
            model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, self.num_actions), dtype=torch.float64)
