"""Preference oracles (judges): protocol, ground truth, BT / Scaled-BT, pairwise, GPM, and from the ecosystem:
standard reward models (``reward-model``), causal LMs as pairwise models (``lm-pair``), API chat models.

``Judge`` protocol: ``prob(prompts, a, b) -> P(a > b)`` and ``matrix(prompt, responses) -> [K, K]``.
Learned judges are trained with :func:`train_judge` (CLI ``inpo judge train``) and read back with
:func:`load_judge`. See docs/judges.md.
"""

from inpo.judges.base import Judge, matrix_from_prob
from inpo.judges.data import PreferencePair, load_preferences
from inpo.judges.func import CallableJudge
from inpo.judges.lm_pair import LMPairJudge
from inpo.judges.losses import bt_loss, gpm_loss, gpm_score, pair_loss, scaled_bt_loss
from inpo.judges.models import GPMJudge, JudgeModel, PairJudge, RewardJudge
from inpo.judges.reward_model import RewardModelJudge
from inpo.judges.synthetic import StyleJudge
from inpo.judges.train import JudgeTrainConfig, evaluate_pairs, load_judge, save_judge, train_judge

__all__ = [
    "CallableJudge",
    "GPMJudge",
    "Judge",
    "JudgeModel",
    "JudgeTrainConfig",
    "LMPairJudge",
    "PairJudge",
    "PreferencePair",
    "RewardJudge",
    "RewardModelJudge",
    "StyleJudge",
    "bt_loss",
    "evaluate_pairs",
    "gpm_loss",
    "gpm_score",
    "load_judge",
    "load_preferences",
    "matrix_from_prob",
    "pair_loss",
    "save_judge",
    "scaled_bt_loss",
    "train_judge",
]
from inpo.judges.api import OpenAIPairwiseJudge as OpenAIPairwiseJudge  # noqa: E402 - API judge (judges/api.py)
