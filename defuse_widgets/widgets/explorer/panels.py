"""What the explorer's panes show, as plain arrays and JSON-ready dicts: region rows, a region's
panel, the audit and the accuracy chart's entries.

Each function reads a :class:`~defuse_widgets.session.session.DefuseSession` through its public
API; no widget is imported here, the explorer only moves the results into its traits. The map's
own data (layout, colors, thumbnails, fixed errors, background) is the
:mod:`defuse_widgets.projection` stage.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from defuse_widgets.imaging import to_uint8
from defuse_widgets.projection.colors import region_color
from defuse_widgets.regions.distill import RegionSet
from defuse_widgets.search.errors import ErrorSet
from defuse_widgets.session.session import DefuseSession
from defuse_widgets.utils.jsonio import nan_to_none


def require_regions(session: DefuseSession) -> RegionSet:
    """The session's regions; RuntimeError when :meth:`distill` has not run yet."""
    regions = session.regions
    if regions is None:
        raise RuntimeError("no regions yet: call session.distill() first")
    return regions


def region_rows(
    regions: Any,
    evaluation: dict[int, dict[str, Any]],
    recognition: dict[int, float] | None = None,
    reach: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """One JSON-ready row per region of a ``RegionSet``, largest first.

    Parameters
    ----------
    regions : RegionSet
        The session's regions.
    evaluation : dict
        Region id -> that region's entry of ``session.evaluate()["regions"]`` (may be empty).
    recognition : dict, optional
        Region id -> share of its samples recognised as its class
        (``session.sample_recognition()``); absent: ``recognition`` is None.
    reach : dict, optional
        Region id -> the real training rows it reaches (``session.reach().counts()``); absent:
        ``reach`` is None.

    Returns
    -------
    list of dict
        ``id``, ``color``, ``size``, ``weight``, ``transition``, ``transition_share``,
        ``validity``, ``confidence``, ``user_defined`` and, once evaluated, ``sample_accuracy``,
        ``real_accuracy``, ``real_images``, ``recognition`` and ``reach`` (NaN and unknown as
        None).
    """
    rows = []
    for r in regions.regions:
        ev = evaluation.get(int(r.id), {})
        sample_acc, real_acc, real_n = (
            _field(ev, k, None) for k in ("sample_accuracy", "real_accuracy", "real_images")
        )
        rows.append(
            nan_to_none(
                {
                    "id": int(r.id),
                    "color": region_color(int(r.id)),
                    "size": int(r.size),
                    "weight": float(r.weight),
                    "transition": [int(r.transition[0]), int(r.transition[1])],
                    "transition_share": float(r.transition_share),
                    "validity": float(r.mean_validity),
                    "confidence": float(r.mean_confidence),
                    "user_defined": bool(r.user_defined),
                    "sample_accuracy": sample_acc,
                    "real_accuracy": real_acc,
                    "real_images": real_n,
                    "recognition": (recognition or {}).get(int(r.id)),
                    "reach": (reach or {}).get(int(r.id)),
                }
            )
        )
    rows.sort(key=lambda row: (-row["size"], row["id"]))
    return rows


def region_panel(
    session: DefuseSession, errors: ErrorSet, region_id: int, samples: int = 16, members: int = 16
) -> dict[str, Any]:
    """The region panel's arrays: fresh samples, the most confident member errors, their sources.

    Parameters
    ----------
    session : DefuseSession
        A session with regions.
    errors : ErrorSet
        The errors the regions were fitted on (``session.errors`` when the explorer was made).
    region_id : int
        The region (``KeyError`` when the session has no such region).
    samples, members : int
        How many fresh samples and member errors (0: none).

    Returns
    -------
    dict
        ``region``; with ``samples``: ``samples`` uint8 (n, H, W, C), ``sample_pred`` int32 (n,),
        ``sample_conf`` float32 (n,); with ``members`` (and the region has some): ``members``,
        ``member_index``, ``member_pred``, ``member_conf``, ``member_true`` and ``sources`` (the
        members' source images, uint8 like ``members``).
    """
    regions = require_regions(session)
    regions.get(region_id)
    out: dict[str, Any] = {"region": int(region_id)}
    if samples:
        smp = regions.sample(region_id, samples, purpose="label")
        out["samples"] = to_uint8(smp.images)
        out["sample_pred"] = smp.predictions.numpy().astype(np.int32)
        out["sample_conf"] = smp.confidence.numpy().astype(np.float32)
    idx = regions.members(region_id)
    if members and len(idx):
        # most confident errors first: the clearest examples of the bug
        idx = idx[errors.confidence[idx].argsort(descending=True)][:members]
        images = session.decode(errors.codes[idx])
        conf, pred = session.predict(images).max(1)
        x, _ = session.data.split(errors.split)
        out["members"] = to_uint8(images)
        out["member_index"] = idx.numpy().astype(np.int32)
        out["member_pred"] = pred.numpy().astype(np.int32)
        out["member_conf"] = conf.numpy().astype(np.float32)
        out["member_true"] = errors.true_label[idx].numpy().astype(np.int32)
        out["sources"] = to_uint8(x[errors.source_index[idx]])
    return out


def audit_payload(
    session: DefuseSession, region_id: int, min_probability: float, limit: int
) -> dict[str, Any]:
    """The region's conflicting training images, likeliest first, plus those already relabeled to
    the region's label (the session's audit leaves them out, since their label now agrees; the
    person must still see them to undo a relabel).

    Returns
    -------
    dict
        ``region``, ``label``, ``min_probability``, ``inside`` (training images in the region),
        ``conflicts`` (those whose label differs), ``total`` (rows before ``limit``), ``round``,
        and arrays ``indices`` (training indices), ``images`` uint8 (n, H, W, C), ``original``
        (dataset labels), ``predictions``, ``probabilities``.
    """
    result = session.audit(region_id, min_probability)
    label = result.region_label
    parts = [(result.indices, result.predictions, result.probabilities, result.evidence)]
    fixed = [i for i, r in session.relabels.items() if r.new_label == label]
    if fixed:
        # audit against another class: rows whose label is now the region's label come back
        other_class = (label + 1) % len(session.data.classes)
        other = session.audit(region_id, min_probability, label=other_class)
        keep = torch.isin(other.indices, torch.tensor(fixed, dtype=torch.long))
        parts.append(
            (
                other.indices[keep],
                other.predictions[keep],
                other.probabilities[keep],
                other.evidence[keep],
            )
        )
    idx = torch.cat([p[0] for p in parts]).long()
    pred = torch.cat([p[1] for p in parts]).long()
    prob = torch.cat([p[2] for p in parts]).float()
    evidence = torch.cat([p[3] for p in parts]).float()
    total = len(idx)
    # the audit's own ranking: strongest evidence of a wrong label first
    key = [(-float(evidence[i]), -float(prob[i]), int(idx[i])) for i in range(total)]
    order = sorted(range(total), key=key.__getitem__)[:limit]
    pick = torch.tensor(order, dtype=torch.long)
    idx, pred, prob = idx[pick], pred[pick], prob[pick]
    return {
        "region": int(region_id),
        "label": int(label),
        "min_probability": float(min_probability),
        "inside": int(result.inside),
        "conflicts": len(result),
        "total": total,
        "round": int(session.active_round),
        "indices": idx.numpy().astype(np.int32),
        "images": to_uint8(session.data.x_train[idx]),
        "original": session.data.y_train[idx].numpy().astype(np.int32),
        "predictions": pred.numpy().astype(np.int32),
        "probabilities": prob.numpy().astype(np.float32),
    }


def history_entry(
    session: DefuseSession, event: str, evaluation: Any, record: Any = None
) -> dict[str, Any]:
    """One JSON-ready point of the accuracy chart from an evaluation (``session.evaluate()`` or a
    round's ``record["evaluation"]``); ``event`` is ``"start"``, ``"before"``, ``"round"`` or
    ``"revert"``. A round's ``record`` adds what it did per class, its harm and why it stopped."""

    def get(key: str, default: Any = math.nan) -> Any:
        return _field(evaluation, key, default)

    return nan_to_none(
        {
            "event": event,
            "round": int(get("round", session.active_round)),
            "test_accuracy": float(get("test_accuracy")),
            "labeled_region_accuracy": float(get("labeled_region_accuracy")),
            "labeled_region_real_accuracy": float(get("labeled_region_real_accuracy")),
            "labeled_region_real_images": int(get("labeled_region_real_images", 0)),
            "labels": len(session.correctable()),
            "relabels": len(session.relabels),
            "time": time.time(),
            **({} if record is None else round_summary(session, record)),
        }
    )


def round_summary(session: DefuseSession, record: Any) -> dict[str, Any]:
    """What the explorer says about a finished round: per-class test deltas (points), the
    classes it harmed, its validation accuracy before and after, the round it started from and
    why it stopped."""
    names = session.data.classes
    deltas = list(_field(record, "class_deltas", []) or [])
    validation = _field(record, "validation", None) or {}
    return {
        "validation": {k: validation[k]["overall"] for k in ("before", "after") if k in validation},
        "base_round": _field(record, "base_round", 0),
        "stopped": _field(record, "stopped", ""),
        "class_deltas": [{"name": names[c], "delta": d} for c, d in enumerate(deltas)],
        "harm": [{"name": h["name"], "drop": h["drop"]} for h in _field(record, "harm", []) or []],
        "samples_note": " ".join(n for n in (samples_note(record), trained_on_note(record)) if n),
    }


def trained_on_note(record: Any) -> str:
    """What a round trained on besides the training split: the real images inside its labeled
    regions (upweighted) and the generated region samples."""
    real = sum((_field(record, "real_images", {}) or {}).values())
    generated = _field(record, "generated_images", 0) or 0
    if not real and not generated:
        return ""
    weight = (_field(record, "settings", {}) or {}).get("real_weight", 1)
    drawn = "drawn as one group per region" if weight is None else f"drawn {weight:g}x as often"
    return (
        f"It trained on {real} real image{'' if real == 1 else 's'} inside the labeled regions "
        f"({drawn}) and {generated} generated region sample"
        f"{'' if generated == 1 else 's'}."
    )


def samples_note(record: Any) -> str:
    """What a vetted round trained on: the share of region samples the labeler kept, and, when it
    kept none, that the round was plain extra training (no region term). Empty when not vetted."""
    kept = _field(record, "samples_kept", None)
    if not _field(record, "vetted", False) or kept is None:
        return ""
    if kept == 0:
        return (
            "The labeler rejected every region sample, so this round trained without the "
            "region term (extra training only)."
        )
    return f"The labeler kept {100 * kept:.0f}% of the region samples drawn."


def region_evaluation(evaluation: Any) -> dict[int, Any]:
    """Region id -> its entry of an evaluation's ``"regions"`` (empty when there is none)."""
    regions = _field(evaluation, "regions", None)
    return {int(k): v for k, v in (regions or {}).items()}


def _field(record: Any, key: str, default: Any) -> Any:
    """``record[key]``, or ``default`` when the record (a dict or a small dataclass) lacks it."""
    if record is None:
        return default
    try:
        value = record[key]
    except (KeyError, TypeError):
        value = getattr(record, key, default)
    return default if value is None and default is not None else value
