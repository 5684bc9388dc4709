"""The README's run-config table is what ``fedhn config`` prints, so the two cannot drift."""

from typer.testing import CliRunner

from fedhn.app.config import KEYS
from fedhn.launch.cli import app
from tests.conftest import PROJECT


def _readme_table() -> str:
    lines = (PROJECT / "README.md").read_text().splitlines()
    section = lines[lines.index("### Run config") :]
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
