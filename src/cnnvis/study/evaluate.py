"""A classifier's accuracy on a labelled dataset: its confusion matrix and its most confident mistakes.

    ev = evaluate(vm, ds, batch_size=256, mistakes=16)
    ev.confusion        # (K, K) int64 counts over the model's K classes (rows: true, columns: predicted)
    ev.used             # the model's classes the data has, in order
    ev.mistakes         # [(prob of the wrong class, index in ds, true, predicted)], most confident first

The dataset's classes are matched to the model's by name (`cnnvis.data.class_map`); unlabelled
images are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cnnvis.progress import Progress, progress_iter


@dataclass
class EvalResult:
    """What `evaluate` counted (see the module doc)."""

    confusion: np.ndarray
    used: list[int]
    mistakes: list[tuple[float, int, int, int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Images counted (labelled ones)."""
        return int(self.confusion.sum())


def evaluate(vm, ds, *, batch_size: int = 256, mistakes: int = 16, progress: Progress = None) -> EvalResult:
    """Run the classifier `vm` over `ds` in batches of `batch_size` (no gradients) -> EvalResult, keeping
    the `mistakes` most confident wrong answers (ties: the earlier image first)."""
    import torch

    from cnnvis.data import class_map

    to_model = torch.from_numpy(class_map(vm, ds))
    k = len(vm.labels)
    cm = np.zeros((k, k), np.int64)
    worst: list[tuple[float, int, int, int]] = []  # (prob of the wrong class, index, true, predicted)
    batches = ds.batches(batch_size, with_index=True)
    n_batches = -(-len(ds) // batch_size)
    with torch.no_grad():
        for x, y, idx in progress_iter(batches, total=n_batches, desc="evaluate", progress=progress):
            keep = y >= 0
            x, y, idx = x[keep], to_model[y[keep]], idx[keep]
            p = torch.softmax(vm(x.to(vm.device)).float(), 1).cpu()
            conf, pred = p.max(1)
            np.add.at(cm, (y.numpy(), pred.numpy()), 1)
            wrong = (pred != y).nonzero().flatten()
            worst.extend((float(conf[i]), int(idx[i]), int(y[i]), int(pred[i])) for i in wrong)
            worst = sorted(worst, key=lambda t: (-t[0], t[1]))[:mistakes]
    return EvalResult(cm, sorted(set(to_model.tolist())), worst)
