"""The ``fedhn`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from fedhn import __version__

app = typer.Typer(
    help="Heterologous Normalization and its family for federated learning on Flower.", no_args_is_help=True
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedhn {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Heterologous Normalization and its family for federated learning on Flower."""


@app.command()
def norms() -> None:
    """List every norm preset with its mean set and std set."""
    from fedhn.norms import PRESETS, parse_spec

    rows = [("preset", "mean set", "std set", "inference statistics", "description")]
    for preset in PRESETS:
        spec = parse_spec(preset.name.replace("<G>", "8"))
        inference = "running (fixed, folds into conv)" if spec.uses_running_stats_only else "per sample"
        rows.append((preset.name, preset.mean, preset.std, inference, preset.description))
    rows.append(("mean=<sets>,std=<sets>", "any", "any", "running if every set is bn/en_g<G>", "general form"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    typer.echo(
        "\nSets: bn, in, ln, gn (= gn_g32), en (= en_g1), gn_g<G>, en_g<G>; join with '+' for a learned mixture."
    )
