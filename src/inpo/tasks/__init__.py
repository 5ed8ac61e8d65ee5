"""Built-in tasks: a tiny LM whose policy maps onto a finite preference game (DESIGN.md section 4).

Tokenization convention for the loop: ``prompt_ids = tok(prompt).input_ids`` (prepends ``<bos>``),
``response_ids = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]``.
"""

from inpo.tasks.builtin import BuiltinTask, BuiltinTaskConfig, TaskJudge
from inpo.tasks.reference import build_reference, load_reference, reference_dir, style_fit, train_sft

__all__ = [
    "BuiltinTask",
    "BuiltinTaskConfig",
    "TaskJudge",
    "build_reference",
    "load_reference",
    "reference_dir",
    "style_fit",
    "train_sft",
]
