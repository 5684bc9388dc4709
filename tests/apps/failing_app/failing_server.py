"""A ServerApp that raises once it runs (the failure fedhn compare must report, not pass over)."""

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
client = ClientApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raise RuntimeError("deliberate failure for the test")
