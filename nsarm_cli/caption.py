"""``nsarm caption``: caption LR images with a vision-language model (or the fixed prompt) into a JSONL file.

Heavy imports (torch, transformers) happen inside the command so ``nsarm --help`` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nsarm_cli._console import info, print_json, progress
from nsarm_cli._options import device_option


def caption(
    images: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or glob patterns.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="JSONL file to write (appended to; see --overwrite).")
    ],
    model: Annotated[
        str,
        typer.Option("--model", help="Hugging Face id or local folder of a LLaVA-style model."),
    ] = "llava-hf/llava-1.5-7b-hf",
    fixed: Annotated[
        bool,
        typer.Option("--fixed", help="Write the fixed prompt for every image instead of running a model."),
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per generate call.")] = 4,
    query: Annotated[
        str | None, typer.Option("--query", help="Instruction given with each image (default: NSARM's).")
    ] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature; 0 = greedy.")
    ] = 0.2,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")] = 0.7,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Caption length limit (tokens).")
    ] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    device: Annotated[str | None, device_option("cpu, cuda, cuda:1 (default: cuda if available).")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start OUT afresh instead of skipping images already in it.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a summary as JSON on stdout.")] = False,
) -> None:
    """Caption images (NSARM's LLaVA query, or --fixed) into OUT as {image_path, long_caption} lines.

    Runs resume: images already in OUT are skipped. Lines follow NSARM's caption files
    (image_path, h_div_w, long_caption, long_caption_type).
    """
    from nsarm_core.caption import CAPTION_QUERY, Captioner, GenerationSettings, caption_images
    from nsarm_core.data.files import collect_images

    paths = collect_images(images, recursive=True)
    settings = GenerationSettings(
        query=query or CAPTION_QUERY,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    captioner = None if fixed else Captioner.from_pretrained(model, device=device)
    with progress() as bar:
        task = bar.add_task("caption", total=len(paths), status="")
        run = caption_images(
            paths,
            out,
            captioner=captioner,
            settings=settings,
            batch_size=batch_size,
            overwrite=overwrite,
            on_batch=lambda n: bar.advance(task, n),
        )
    summary = {"out": str(run.out), "written": run.written, "skipped": run.skipped, "model": run.kind}
    if json_out:
        print_json(summary)
    else:
        info(f"captioned {run.written} image(s), skipped {run.skipped} already in {run.out} ({run.kind})")
