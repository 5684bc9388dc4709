"""The ``fedhn`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedhn import __version__
from fedhn.launch.deploy_cli import app as deploy_app

app = typer.Typer(
    help="Heterologous Normalization and its family for federated learning on Flower.", no_args_is_help=True
)
app.add_typer(deploy_app, name="deploy")


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
    from fedhn.baselines import BASELINES
    from fedhn.norms import LAYER_PRESETS, NO_NORM, PRESETS, parse_spec

    rows = [("preset", "mean set", "std set", "inference statistics", "description")]
    for preset in PRESETS:
        spec = parse_spec(preset.name.replace("<G>", "8"))
        inference = "running (fixed, folds into conv)" if spec.uses_running_stats_only else "per sample"
        rows.append((preset.name, preset.mean, preset.std, inference, preset.description))
    rows += [(p.name, p.mean, p.std, p.inference, p.description) for p in LAYER_PRESETS]
    rows.append(("mean=<sets>,std=<sets>", "any", "any", "running if every set is bn/en_g<G>", "general form"))
    rows.append((NO_NORM, "-", "-", "none", "no normalization (nn.Identity; FedWon)"))
    _echo_table(rows)
    typer.echo(
        "\nSets: bn, in, ln, gn (= gn_g32), en (= en_g1), gn_g<G>, en_g<G>; join with '+' for a learned mixture."
    )
    typer.echo("\nBaselines of the FL literature (run-config keys):")
    for baseline in BASELINES:
        typer.echo(f"\n{baseline.name}: {baseline.run_config}")
        typer.echo(f"  paper: {baseline.paper}\n  statistics: {baseline.statistics}")


def _echo_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@app.command()
def config() -> None:
    """Print the run-config keys with their defaults and meanings, as the README's Markdown table."""
    from fedhn.app.config import markdown_table

    typer.echo(markdown_table())


@app.command()
def compare(
    norms: Annotated[
        str, typer.Option(help="Comma-separated norm specs; ';' separates specs that contain commas.")
    ] = "bn,gn_g4,hn",
    run_config: Annotated[
        list[str] | None,
        typer.Option("--run-config", "-c", help="A run-config TOML file or 'key=value ...' overrides (repeatable)."),
    ] = None,
    num_supernodes: Annotated[int, typer.Option(help="Simulated nodes (SuperNodes).")] = 10,
    clients_per_node: Annotated[
        int | None,
        typer.Option(
            min=1, help="Clients each node hosts, trained packed (run-config clients-per-node).", show_default="1"
        ),
    ] = None,
    cpus_per_client: Annotated[
        int, typer.Option(help="CPU cores per ClientApp (Ray schedules cores / this at once).")
    ] = 1,
    gpus_per_client: Annotated[float, typer.Option(help="GPU fraction per ClientApp, e.g. 0.25 (0 = CPU).")] = 0.0,
    out: Annotated[Path | None, typer.Option(help="Output directory.", show_default="outputs/compare-<time>")] = None,
    app_dir: Annotated[Path, typer.Option("--app", help="The Flower App (fedhn's project directory).")] = Path("."),
    resume: Annotated[bool, typer.Option(help="Continue the runs in --out from their last checkpoints.")] = False,
) -> None:
    """Run one Flower simulation per norm (flwr run) and write summary.md and accuracy.png."""
    from fedhn.app.config import ConfigError
    from fedhn.launch.compare import (
        Federation,
        default_out_dir,
        parse_run_config_args,
        plan_runs,
        progress_report,
        run_comparison,
    )
    from fedhn.launch.signals import Stopped, stopped_by_signals

    if not (app_dir / "pyproject.toml").is_file():
        raise typer.BadParameter(
            f"{app_dir.resolve()} has no pyproject.toml; run from fedhn's project directory or pass --app"
        )
    out_dir = (out or default_out_dir()).resolve()
    federation = Federation(num_supernodes, cpus_per_client, gpus_per_client)
    specs = [n.strip() for n in (norms.split(";") if ";" in norms else norms.split(",")) if n.strip()]
    try:
        overrides = parse_run_config_args(run_config or []) | ({"resume": True} if resume else {})
        overrides |= {"clients-per-node": clients_per_node} if clients_per_node else {}
        plans = plan_runs(app_dir.resolve(), specs, overrides, out_dir, federation)
    except ConfigError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    try:
        with stopped_by_signals():
            comparison = run_comparison(app_dir.resolve(), plans, out_dir, federation, echo=typer.echo)
    except Stopped as stop:
        typer.secho(f"\n{stop}: every process it started is stopped.", fg=typer.colors.RED, err=True)
        typer.echo(progress_report(plans), err=True)
        typer.echo(f"Resume: {resume_command(out_dir)}", err=True)
        raise typer.Exit(stop.exit_code) from None
    typer.echo(f"\n{comparison.table}\nWrote {out_dir / 'summary.md'} and {out_dir / 'accuracy.png'}")
    if comparison.failed:
        raise typer.Exit(1)


def resume_command(out_dir: Path) -> str:
    """This command line with ``--out out_dir --resume`` (checkpoints make the rerun continue each run)."""
    import shlex
    import sys

    words = sys.argv[1:]
    words += [] if "--out" in words else ["--out", str(out_dir)]
    words += [] if "--resume" in words else ["--resume"]
    return f"fedhn {shlex.join(words)}"


@app.command()
def report(
    dirs: Annotated[list[Path], typer.Argument(help="Run directories, or comparison directories holding them.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write summary.md and accuracy.png.", show_default="the one DIR, or .")
    ] = None,
) -> None:
    """Rebuild summary.md and accuracy.png from existing run directories."""
    from fedhn.app.results import CONFIG_FILE, read_results
    from fedhn.launch.report import write_report

    run_dirs = []
    for directory in dirs:
        if (directory / CONFIG_FILE).is_file():
            run_dirs.append(directory)
        else:
            run_dirs += sorted(p.parent for p in directory.glob(f"*/{CONFIG_FILE}"))
    if not run_dirs:
        raise typer.BadParameter(f"no fedhn run directory (with {CONFIG_FILE}) in {', '.join(map(str, dirs))}")
    target = out or (dirs[0] if len(dirs) == 1 else Path("."))
    table = write_report([read_results(d) for d in run_dirs], target)
    typer.echo(f"{table}\nWrote {target / 'summary.md'} and {target / 'accuracy.png'}")


@app.command()
def fluctuation(
    dataset: Annotated[
        str, typer.Option(help="mnist (torchvision, in --data-dir), another fedhn dataset, or a .npz path.")
    ] = "mnist",
    data_dir: Annotated[Path, typer.Option(help="Where torchvision datasets are.")] = Path("data"),
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes, one training run each.")] = "128,4",
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs per run (the paper: 20).")] = 20,
    max_steps: Annotated[
        int | None, typer.Option(min=2, help="Stop each run after this many steps.", show_default="no cap")
    ] = None,
    lr: Annotated[float, typer.Option(help="Learning rate at batch size 128; lr x bs/128 at bs.")] = 0.1,
    momentum: Annotated[float, typer.Option(help="SGD momentum (the paper's recipe).")] = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay (the paper's recipe).")] = 5e-4,
    neurons: Annotated[
        str, typer.Option(help="Neurons to record, layer-neuron, 1-based (the paper's i-j).")
    ] = "1-1,1-2,4-1,4-2",
    last_steps: Annotated[int, typer.Option(min=2, help="Steps the fluctuation and the evolution plots cover.")] = 200,
    norm: Annotated[str, typer.Option(help="The MLP's norm spec (see fedhn norms).")] = "bn",
    seed: Annotated[int, typer.Option(help="Seed of the initialization and the batch order.")] = 0,
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads for torch; the MLP's small batches train fastest on one.")
    ] = 1,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("outputs/fluctuation"),
) -> None:
    """Record BN and EN batch statistics while training the paper's MLP (section 4.6, Figures 6-7)."""
    import shlex
    import sys

    import torch

    from fedhn.app.task import device
    from fedhn.data import load_dataset
    from fedhn.fluctuation import parse_batch_sizes, parse_neurons, study
    from fedhn.models import build_model
    from fedhn.norms import is_norm

    torch.set_num_threads(threads)
    try:
        sizes = parse_batch_sizes(batch_sizes)
        data = load_dataset(dataset, str(data_dir))
        model = build_model("mlp", data.num_classes, norm, data.channels, data.image_size)
        chosen = parse_neurons(neurons, [m.num_features for m in model.modules() if is_norm(m)])
    except (FileNotFoundError, ValueError) as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    recipe = dict(epochs=epochs, max_steps=max_steps, lr=lr, momentum=momentum, weight_decay=weight_decay)
    recipe |= dict(norm=norm, seed=seed, device=device())
    command = f"fedhn {shlex.join(sys.argv[1:])}"
    text = study(data, chosen, sizes, recipe, last_steps, out.resolve(), command, typer.echo)
    typer.echo(f"\n{text}\nWrote fluctuation.md, fluctuation.png, evolution.png and statistics.npz to {out}")


if __name__ == "__main__":
    app()
