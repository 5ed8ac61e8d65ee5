"""The tiny built-in task used by the loop tests: a 40-step SFT on 128 prompts, 8 train / 4 eval prompts."""

TINY_TASK = {"n_train_prompts": 8, "n_eval_prompts": 4, "sft_steps": 40, "n_sft_prompts": 128}
