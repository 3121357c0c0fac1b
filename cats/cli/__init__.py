"""The `cats` command. Every CatsError becomes one line on stderr and exit status 1."""

from __future__ import annotations

import sys
from typing import Any

import typer

from cats import __version__
from cats.cli import bom, data, demo, jobs, run, shell, store, verify
from cats.cli import mesh as mesh_cli
from cats.cli import node as node_cli
from cats.cli import provenance as provenance_cli
from cats.errors import Cancelled, CatsError

app = typer.Typer(
    name="cats",
    help="CATs: content-addressed compute over data, with verifiable provenance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cats {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """CATs: content-addressed compute over data, with verifiable provenance."""


store.register(app)
run.register(app)
bom.register(app)
verify.register(app)
data.register(app)
mesh_cli.register(app)
node_cli.register(app)
shell.register(app)
provenance_cli.register(app)
demo.register(app)
jobs.register(app)


def command() -> Any:
    """The click command behind `app`, its flags shown in `--help` without a `<bool>` type (they take no value)."""

    def plain_flags(cmd: Any, parent: Any = None) -> None:
        ctx = typer.Context(cmd, parent=parent, **cmd.context_settings)  # as at run time: -h is inherited
        for param in [*cmd.params, cmd.get_help_option(ctx)]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        for sub in getattr(cmd, "commands", {}).values():
            plain_flags(sub, ctx)

    root = typer.main.get_command(app)
    plain_flags(root)
    return root


def main() -> None:
    try:
        command()(standalone_mode=True)
    except Cancelled as e:  # stopped as asked, not failed: the status a shell gives an interrupted command
        print(f"Cancelled: {e}", file=sys.stderr)
        sys.exit(130)
    except CatsError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:  # `cats cat CID | head`
        sys.stderr.close()
        sys.exit(1)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    finally:
        _leave_ray()


def _leave_ray() -> None:
    """Leave the Ray a command joined (a run's), if any, before exiting: Ray's own exit handler takes
    about a second longer to do the same."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
