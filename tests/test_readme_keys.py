"""The README's run-config and baselines tables are what ``fedhn config`` and ``fedhn.baselines`` print, so they
cannot drift."""

from typer.testing import CliRunner

from fedhn import baselines
from fedhn.app.config import KEYS
from fedhn.launch.cli import app
from tests.conftest import PROJECT


def _readme_table(heading: str = "### Run config") -> str:
    lines = (PROJECT / "README.md").read_text().splitlines()
    section = lines[lines.index(heading) :]
    start = next(i for i, line in enumerate(section) if line.startswith("|"))
    end = next(i for i in range(start, len(section)) if not section[i].startswith("|"))
    return "\n".join(section[start:end])


def test_fedhn_config_prints_one_row_per_key_with_its_default():
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{name}`" for name in KEYS]
    assert "| `batch-sizes` | `2,4,8,16,32,64,128` |" in result.output
    assert '| `out-dir` | `""` |' in result.output and "| `resume` | false |" in result.output


def test_readme_table_is_fedhn_configs_output():
    assert _readme_table() == CliRunner().invoke(app, ["config"]).output.rstrip("\n")


def test_readme_baselines_table_is_the_baselines_table():
    assert _readme_table("### Baselines of the FL literature: FedBN, FixBN, FedWon") == baselines.markdown_table()


def test_fedhn_norms_lists_no_norm_and_every_baseline_with_its_paper():
    result = CliRunner().invoke(app, ["norms"])
    assert result.exit_code == 0, result.output
    assert "no normalization" in result.output
    for baseline in baselines.BASELINES:
        assert f"{baseline.name}: {baseline.run_config}" in result.output
        assert baseline.paper in result.output and baseline.statistics in result.output
