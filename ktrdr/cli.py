"""``ktrdr`` on the command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="ktrdr: historical market data, fetched once and stored locally.",
                  no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print ktrdr's version."""
    from importlib.metadata import version as pkg_version

    typer.echo(pkg_version("ibfarm"))


def main() -> None:
    app()
