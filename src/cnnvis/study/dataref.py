"""Open a dataset for a model, refusing data the model cannot read as it was trained.

    ds = open_for_model(vm, "cifar10-jpeg.zip", split="test", size=None, model_ref=spec.model)

Images go in at the dataset's own size (what the net sees is what is in the data) unless `size`
is given. Refused, one line each: another channel count than the model's (CIFAR into an MNIST
net), images smaller than the model's minimum, and for a checkpoint (a model given by path)
class names that are not the checkpoint's classes (its labels would be read wrongly).
"""

from __future__ import annotations

from cnnvis.errors import CnnvisError


def _is_checkpoint(model_ref: str | None) -> bool:
    if not model_ref:
        return False
    from cnnvis.models.refs import is_checkpoint

    return is_checkpoint(model_ref)


def open_for_model(vm, ref: str, split: str | None = None, size: int | None = None, model_ref: str | None = None,
                   limit: int | None = None):
    """`cnnvis.data.open_dataset(ref, split)` checked against the model (see the module doc); `limit`
    keeps the first `limit` items. Empty data is a CnnvisError."""
    from cnnvis.data import open_dataset

    ds = open_dataset(ref, split=split, size=size)
    if ds.channels != vm.channels:
        c = vm.channels
        raise CnnvisError(
            f"dataset {ds.name!r} has {ds.channels}-channel {ds.size[0]}x{ds.size[1]} images, but {vm.name} takes "
            f"{c}-channel images ({'x'.join(map(str, vm.input_shape))}); give data the model was trained on "
            f"({'grey' if c == 1 else 'RGB'} images)")
    if min(ds.size) < vm.min_size:
        raise CnnvisError(f"dataset {ds.name!r} has {ds.size[0]}x{ds.size[1]} images, too small for {vm.name} "
                          f"(at least {vm.min_size} px a side); give a size of at least {vm.min_size}")
    if _is_checkpoint(model_ref) and vm.labels and ds.classes:
        own = set(map(str, vm.labels))
        bad = [c for c in ds.classes if c not in own]
        if bad:
            shown = ", ".join(list(map(str, vm.labels))[:10]) + (", ..." if len(vm.labels) > 10 else "")
            raise CnnvisError(
                f"dataset {ds.name!r} has classes the checkpoint {vm.name!r} does not know ({', '.join(bad[:5])}"
                f"{', ...' if len(bad) > 5 else ''}); its classes are {shown}: give data of those classes")
    if limit is not None and limit < len(ds):
        ds = ds.subset(list(range(limit)))
    if len(ds) == 0:
        raise CnnvisError(f"dataset {ds.name!r} (split {ds.split!r}) has no images; give a folder or zip with "
                          "images in class folders")
    return ds


def class_name(vm, ds, label: int) -> str | None:
    """The dataset's class name of `label` (None when unlabelled)."""
    if label is None or label < 0 or label >= len(ds.classes):
        return None
    return str(ds.classes[label])
