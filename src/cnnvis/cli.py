"""The `cnnvis` command line. Sub-commands live in `cnnvis.commands.*` (each module lists its
click commands in COMMANDS) and are collected here. User errors print one line and exit 2."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import click

from cnnvis import __version__
from cnnvis.errors import CnnvisError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnnvis")
def cli() -> None:
    """See what convolutional neural networks learn.

    Every command works on the embedded ImageNet model (efficientnet_lite0) offline; pick
    another with --model (see `cnnvis models`) and local weights with --weights PATH.
    """


def _collect() -> None:
    import cnnvis.commands as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"cnnvis.commands.{info.name}")
        for cmd in getattr(mod, "COMMANDS", ()):
            cli.add_command(cmd)


_collect()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the CLI, maps CnnvisError to 'error: ...' and exit code 2."""
    import warnings

    from cnnvis.malloc import tune_malloc

    tune_malloc()  # the CLI owns its process: keep freed buffers (about 1.5x faster steps on CPU)
    with warnings.catch_warnings():  # restores warnings.showwarning when the command ends
        warnings.showwarning = _one_line(warnings.showwarning)
        return _main(argv)


def _one_line(default):
    """A warnings.showwarning that prints a CnnvisWarning as one line 'warning: ...' on stderr."""
    from cnnvis.errors import CnnvisWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CnnvisWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def _main(argv: list[str] | None) -> int:
    try:
        try:
            cli.main(args=argv, prog_name="cnnvis", standalone_mode=False)
        finally:
            _finish()  # a finished result is stored (and its notes said) however the command ended
    except CnnvisError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except SystemExit as e:  # a command's own exit code (render-all: 1 when tasks failed; 143 on SIGTERM)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MemoryError:
        click.echo("error: out of memory; try a smaller --size, --batch or image", err=True)
        return 2
    return 0


def _finish() -> None:
    from cnnvis.commands.common import finish

    finish()


def run() -> None:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
