"""The explorer's audit data: the training images inside one class-labeled region, as arrays.

:func:`audit_payload` builds what the browser shows for the selected region (one dict of arrays,
sent as binary buffers); :func:`current_labels` the training labels of those images with the
session's confirmed relabels applied (resent alone after each relabel or undo).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..imaging import to_uint8


def audit_payload(
    session: Any, region_id: int, min_probability: float, limit: int
) -> dict[str, Any]:
    """The region's conflicting training images, likeliest first, plus those already relabeled to
    the region's label (the session's audit leaves them out, since their label now agrees; the
    person must still see them to undo a relabel).

    Keys: ``region``, ``label``, ``min_probability``, ``inside`` (training images in the region),
    ``conflicts`` (those whose label differs), ``total`` (rows before ``limit``), ``round``, and
    arrays ``indices`` (training indices), ``images`` uint8 (n, H, W, C), ``original`` (dataset
    labels), ``predictions``, ``probabilities``.
    """
    result = session.audit(region_id, min_probability)
    label = result.region_label
    parts = [(result.indices, result.predictions, result.probabilities)]
    fixed = [i for i, r in session.relabels.items() if r.new_label == label]
    if fixed:
        # audit against another class: rows whose label is now the region's label come back
        other_class = (label + 1) % len(session.data.classes)
        other = session.audit(region_id, min_probability, label=other_class)
        keep = torch.isin(other.indices, torch.tensor(fixed, dtype=torch.long))
        parts.append((other.indices[keep], other.predictions[keep], other.probabilities[keep]))
    idx = torch.cat([p[0] for p in parts]).long()
    pred = torch.cat([p[1] for p in parts]).long()
    prob = torch.cat([p[2] for p in parts]).float()
    total = len(idx)
    order = sorted(range(total), key=lambda i: (-float(prob[i]), int(idx[i])))[:limit]
    pick = torch.tensor(order, dtype=torch.long)
    idx, pred, prob = idx[pick], pred[pick], prob[pick]
    return {
        "region": int(region_id),
        "label": int(label),
        "min_probability": float(min_probability),
        "inside": int(result.inside),
        "conflicts": len(result),
        "total": total,
        "round": int(getattr(session, "active_round", 0)),
        "indices": idx.numpy().astype(np.int32),
        "images": to_uint8(session.data.x_train[idx])
        if len(idx)
        else np.zeros((0, *_hwc(session.data.image_shape)), np.uint8),
        "original": session.data.y_train[idx].numpy().astype(np.int32),
        "predictions": pred.numpy().astype(np.int32),
        "probabilities": prob.numpy().astype(np.float32),
    }


def current_labels(session: Any, indices: np.ndarray) -> np.ndarray:
    """int32 (n,): the training labels of ``indices`` with the confirmed relabels applied."""
    labels = session.data.y_train[torch.as_tensor(indices, dtype=torch.long)].clone()
    relabels = session.relabels
    for k, i in enumerate(np.asarray(indices).tolist()):
        record = relabels.get(int(i))
        if record is not None:
            labels[k] = record.new_label
    return labels.numpy().astype(np.int32)


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    c, h, w = shape
    return h, w, min(c, 3)
