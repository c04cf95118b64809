"""Weight files: PyTorch state_dicts (.pth/.pt), safetensors, and Keras VGG16 .h5 files (any Keras
Sequential CNN: `cnnvis.models.keras`).

Every failure is a `CnnvisError` naming the file, the problem and the fix.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from cnnvis.errors import CnnvisError

StateDict = "OrderedDict[str, Tensor]"


def read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, Tensor]":
    """Read a `.pth`/`.pt`/`.bin` state_dict (weights_only) or a `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise CnnvisError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise CnnvisError(f"weights file {str(path)!r} is empty")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return OrderedDict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise CnnvisError(f"weights file {str(path)!r} is not a valid safetensors file ({e})") from None
    _check_torch_file(path)
    try:
        with warnings.catch_warnings():  # torch's notes on the pickle protocol: the message below says it all
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnvisError(
            f"weights file {str(path)!r} is a pickle that is not plain weights; cnnvis loads only "
            f"state_dicts (weights_only=True) and will not run its code ({first[:160]}); "
            "save it with torch.save(model.state_dict(), path)"
        ) from None
    except MemoryError:
        raise
    except Exception as e:  # a damaged file fails anywhere in the unpickler (KeyError, IndexError, ...)
        raise CnnvisError(f"weights file {str(path)!r} could not be read as a PyTorch file "
                          f"({type(e).__name__}: {str(e)[:160]}); {_SAVE_HINT}") from None
    return _as_state_dict(obj, path)


_SAVE_HINT = "save weights with torch.save(model.state_dict(), path) or as .safetensors"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _check_torch_file(path: Path) -> None:
    """Refuse, by its first bytes, a file that cannot be a torch.save file: an HDF5/Keras file
    (only VGG16-style models read those) or text. torch.save writes a zip (PK) or, in the legacy
    format, a pickle (first byte 0x80)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if (head.startswith(b"PK\x03\x04") and path.suffix.lower() != ".keras") or head[:1] == b"\x80":
        return
    if head.startswith(_HDF5_MAGIC) or path.suffix.lower() in (".h5", ".hdf5", ".keras"):
        raise CnnvisError(f"weights file {str(path)!r} is a Keras/HDF5 file; the .h5 layout is only supported "
                          f"for VGG16-style models (vgg16, vgg16_hed) and for a Keras Sequential net loaded with "
                          f"--model FILE.h5/.keras; for this model give a .pth/.pt state_dict or a .safetensors file")
    if head[8:9] == b"{":
        raise CnnvisError(f"weights file {str(path)!r} looks like a safetensors file; rename it to *.safetensors")
    text = bool(head) and sum(32 <= b < 127 or b in b"\t\r\n" for b in head) >= 0.9 * len(head)
    what = f"a text file (it starts with {head[:24].decode('ascii', 'replace')!r})" if text else \
        f"not a PyTorch file (it starts with bytes {head[:8].hex(' ')})"
    raise CnnvisError(f"weights file {str(path)!r} is {what}; {_SAVE_HINT}")


def _as_state_dict(obj, path: Path) -> "OrderedDict[str, Tensor]":
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = type(obj).__name__
        raise CnnvisError(
            f"weights file {str(path)!r} holds a {kind}, not a state_dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    sd = OrderedDict((re.sub(r"^(module|_orig_mod)\.", "", k), v) for k, v in obj.items())
    return sd


def apply_state_dict(model: nn.Module, sd: "OrderedDict[str, Tensor]", *, source: str = "weights") -> None:
    """Load `sd` strictly into `model`, with a readable error for missing keys or wrong shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CnnvisError(
            f"{source} do not fit this model: keys {'; '.join(parts)}; are they for another architecture?"
        )
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        k, got, want = bad[0]
        raise CnnvisError(
            f"{source} do not fit this model: {len(bad)} tensors have the wrong shape "
            f"(e.g. {k}: file {got}, model {want}); are they for another architecture or class count?"
        )
    params = {k for k, _ in model.named_parameters()}
    stats = {k for k, _ in model.named_buffers() if k.endswith(("running_mean", "running_var"))}
    broken = [k for k in own if (k in params or k in stats) and sd[k].is_floating_point()
              and not bool(torch.isfinite(sd[k]).all())]
    if broken:
        raise CnnvisError(
            f"{source} hold NaN or infinite values in {len(broken)} tensors (e.g. {broken[0]}): they come from a "
            f"training run that diverged or a damaged file, and every output would be NaN; give weights saved "
            f"before the divergence"
        )
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def map_by_order(sd: "OrderedDict[str, Tensor]", model: nn.Module, *, source: str) -> "OrderedDict[str, Tensor]":
    """Rename a state_dict whose tensors correspond one-to-one, in order, to `model`'s."""
    own = model.state_dict()
    if len(sd) != len(own):
        raise CnnvisError(f"{source} have {len(sd)} tensors, the model {len(own)}; are they for another architecture?")
    out = OrderedDict()
    for (k, v), (ok, ov) in zip(sd.items(), own.items()):
        if v.shape != ov.shape:
            raise CnnvisError(
                f"{source} do not fit this model: tensor {k} has shape {tuple(v.shape)}, "
                f"the model's {ok} {tuple(ov.shape)}"
            )
        out[ok] = v
    return out


# ----------------------------------------------------------------------------- Keras .h5

def read_keras_h5(path: str | os.PathLike) -> "OrderedDict[str, list]":
    """Read a Keras weights .h5 file -> {layer name: [numpy arrays in Keras order]}, in file order.

    Understands the Keras-2 layout (`model_weights/` or root groups with `layer_names` /
    `weight_names` attributes, e.g. vgg16_weights_tf_dim_ordering_tf_kernels.h5) and the
    Keras-3 `.weights.h5` layout (`layers/<name>/vars/0..n`, nested `<block>/layers/<layer>/vars`,
    layer names from the `vars` group's `name` attribute).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CnnvisError(f"weights file {str(path)!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CnnvisError(f"weights file {str(path)!r} is not a readable HDF5/Keras file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layers: OrderedDict[str, list] = OrderedDict()
        if "layer_names" in root.attrs:  # Keras 2
            for lname in root.attrs["layer_names"]:
                lname = lname.decode() if isinstance(lname, bytes) else str(lname)
                g = root[lname]
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs.get("weight_names", [])]
                if names:
                    layers[lname] = [g[n][()] for n in names]
        else:  # Keras 3: groups with a 'vars' subgroup holding 0..n datasets

            def visit(name, obj):
                if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars" and len(obj):
                    keys = sorted(obj.keys(), key=lambda s: int(s) if s.isdigit() else s)
                    parts = name.split("/")
                    label = obj.attrs.get("name", parts[-2] if len(parts) > 1 else name)
                    label = label.decode() if isinstance(label, bytes) else str(label)
                    layers[label] = [obj[k][()] for k in keys]

            root.visititems(visit)
    if not layers:
        raise CnnvisError(f"weights file {str(path)!r} holds no Keras layer weights")
    return layers


def _vgg_key(name: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"block(\d)_conv(\d)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def keras_vgg16_to_torchvision(layers: "OrderedDict[str, list]", model: nn.Module, *, source: str) -> "OrderedDict[str, Tensor]":
    """Convert Keras VGG16 layers (block1_conv1 ... block5_conv3, fc1, fc2, predictions) into
    a state_dict for torchvision's VGG (`features.N`, `classifier.N`).

    Kernels HWIO -> OIHW; dense (in, out) -> (out, in); fc1's rows are reordered from Keras'
    HWC flatten order to PyTorch's CHW order.
    """
    convs = sorted((k, n) for n in layers if (k := _vgg_key(n)) is not None)
    own = model.state_dict()
    conv_keys = [k[: -len(".weight")] for k, v in own.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4]
    if len(convs) != len(conv_keys):
        raise CnnvisError(
            f"{source}: found {len(convs)} Keras VGG conv layers (block*_conv*), the model has {len(conv_keys)}; "
            "is this a VGG16 weights file?"
        )
    sd: OrderedDict[str, Tensor] = OrderedDict()
    for (_, lname), key in zip(convs, conv_keys):
        kernel, bias = layers[lname][:2]
        sd[f"{key}.weight"] = torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous()
        sd[f"{key}.bias"] = torch.from_numpy(bias)
    dense = [n for n in layers if n in ("fc1", "fc2", "predictions")]
    lin_keys = [k[: -len(".weight")] for k, v in own.items() if k.startswith("classifier.") and k.endswith(".weight")]
    if dense:
        if len(dense) != len(lin_keys):
            raise CnnvisError(f"{source}: expected dense layers fc1, fc2, predictions, found {', '.join(dense)}")
        last_conv = sd[f"{conv_keys[-1]}.weight"].shape[0]
        for lname, key in zip(dense, lin_keys):
            kernel, bias = (torch.from_numpy(a) for a in layers[lname][:2])
            w = kernel.t().contiguous()  # (out, in)
            if lname == "fc1":
                side = int(round((w.shape[1] / last_conv) ** 0.5))
                if side * side * last_conv != w.shape[1]:
                    raise CnnvisError(f"{source}: fc1 has {w.shape[1]} inputs, not a square map of {last_conv} channels")
                w = w.reshape(w.shape[0], side, side, last_conv).permute(0, 3, 1, 2).reshape(w.shape[0], -1)
            sd[f"{key}.weight"], sd[f"{key}.bias"] = w, bias
    else:  # a 'notop' file: keep the model's own classifier
        for k, v in own.items():
            if k.startswith("classifier."):
                sd[k] = v
    return sd
