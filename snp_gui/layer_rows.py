"""What the per-layer table shows, computed from an analysis: one row per layer and each layer's costs.

Plain functions without Qt, so they are cheap to call on every keep change and easy to test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from snp_engine.api import Analysis
from snp_engine.groups import UnitGroup


def layer_rows(analysis: Analysis, model: nn.Module | None) -> list[dict]:
    """Rows for :meth:`snp_gui.layer_table.LayerTable.set_rows`, unpruned: prunable groups, then excluded layers."""
    params, flops = layer_costs(analysis, {})  # excluded rows keep these numbers
    # one line per group whose statistics are singular (too few samples, dead or duplicate units)
    warnings = {line.partition(": ")[0]: line.partition(": ")[2] for line in analysis.warnings()}
    rows = [
        {
            "name": g.name,
            "type": _layer_type(model, g.name, g.group.layout) + _group_words(g.group),
            "units": g.units,
            "kept": g.units,
            "explained": 1.0,
            "params": params.get(g.name, 0),
            "flops": flops.get(g.name, 0.0),
            "warning": warnings.get(g.name),
        }
        for g in analysis.groups
    ]
    rows += [
        {
            "name": e.name,
            "type": _layer_type(model, e.name, ""),
            "units": e.units,
            "kept": e.units,
            "explained": None,
            "params": params.get(e.name, 0),
            "flops": flops.get(e.name, 0.0),
            "excluded_reason": e.reason,
        }
        for e in analysis.excluded
    ]
    return rows


def _group_words(group: UnitGroup) -> str:
    """What the row's units are when they are not plain channels: attention heads (and their width),
    or what couples the group."""
    if group.kind == "heads":
        return f" · heads of {group.block} channels"
    return f" · {group.coupling}" if group.coupled else ""


def _layer_type(model: nn.Module | None, name: str, fallback: str) -> str:
    try:
        return type(model.get_submodule(name)).__name__ if model is not None else fallback
    except AttributeError:
        return fallback


def layer_costs(analysis: Analysis | None, keep: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """Parameters and FLOPs of each group's own layers (producers and their norms) and of each excluded
    layer, under ``keep`` (``{}`` gives the unpruned costs); for the table, so microseconds matter."""
    params: dict[str, int] = {}
    flops: dict[str, float] = {}
    if analysis is None:
        return params, flops
    model = analysis.costs
    owners = set(model.units) | {e.name for e in analysis.excluded}

    def kept(group: str) -> int:
        return keep.get(group, model.units[group])

    for layer in model.layers:
        # a coupled group's further producers (a residual stream's block outputs) count for its row
        owner = layer.channel_group or (layer.name if layer.name in owners else layer.out_group)
        if owner is None:
            continue
        layer_params, layer_macs = layer.cost(kept, model.units)
        params[owner] = params.get(owner, 0) + round(layer_params)
        flops[owner] = flops.get(owner, 0.0) + layer_macs
    return params, flops


def fit_texts(fits: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """How each group's consumer was fitted, from a pruning record's ``fits``: one line per group.

    ``fits`` maps a group name (``group:consumer`` for the further readers of a coupled group) to
    :meth:`snp_engine.holdout.FitChoice.to_dict`; the text names the fit kind and its ridge
    (relative to the mean variance of the fitted inputs) and the held-out errors behind the
    choice, e.g. ``"sequential, ridge 1e-04 (held-out error: sequential 12.3 %, one-shot 15.0 %)"``.
    A coupled group's readers are joined with "; ". Groups without an entry (fixed-ridge or
    one-shot pruning, or nothing pruned) have none.
    """
    texts: dict[str, list[str]] = {}
    for key, fit in fits.items():
        group, _, consumer = str(key).partition(":")
        try:
            kind = str(fit["fit"])
            ridge = float(fit["relative_ridge"])
            sequential = float(fit["heldout_error_sequential"])
            one_shot = float(fit["heldout_error_one_shot"])
        except (KeyError, TypeError, ValueError):
            continue  # a record from elsewhere with another shape: show nothing rather than guess
        where = f"at {consumer}: " if consumer else ""
        texts.setdefault(group, []).append(
            f"{where}{kind}, ridge {ridge:.0e} "
            f"(held-out error: sequential {100 * sequential:.1f} %, one-shot {100 * one_shot:.1f} %)"
        )
    return {group: "; ".join(lines) for group, lines in texts.items()}
