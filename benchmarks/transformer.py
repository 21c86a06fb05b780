"""Vision transformers: attention heads and MLP hidden units pruned without fine-tuning, SNP against
torch-pruning at equal FLOPs, and what the analysis costs on torchvision's vit_b_16.

A small torchvision ``VisionTransformer`` (32x32 input, patch 4, so 64 patches + the class token;
:data:`VIT`) is trained here on the digits upscaled to 3x32x32 (AdamW, cosine schedule, label
smoothing 0.1, seed 0) and cached in ``benchmarks/.cache`` like resnet18-32. For every calibration
seed (a random 300 of the 1,300 train + calibration digits) it is analysed once (default ``output``
ordering) and pruned to 30/50/70 % fewer FLOPs, three ways:

* ``heads``: only the attention heads (the MLP groups are locked at full width);
* ``mlp``: only the MLP hidden units (the head groups are locked);
* ``both``: every group, one greedy allocation over heads and MLP units.

SNP is ``api.prune`` with its defaults (sequential calibration, held-out choice of each fit),
physically (torchvision's attention becomes snp's ``HeadAttention``); ``snp-nocomp`` keeps the same
units without compensation, to separate the ordering from the least-squares fit. A target that a
kind cannot reach (every head group keeps at least one head, every MLP at least one unit) is
recorded as unreachable with the kind's largest reduction.

torch-pruning 1.6 cannot remove heads of ``nn.MultiheadAttention``: its MHA pruner only removes
channels of ``embed_dim``, which in a ViT is the residual stream shared by every block, and keeps
``num_heads`` (``num_heads``/``prune_num_heads`` act on q/k/v *Linear* layers only). Its head pruning
is therefore run on a timm ``VisionTransformer`` holding the same trained weights (fused ``qkv``
Linear, same function: logits agree to ~1e-6), the way torch-pruning's own timm ViT example does
it: ``MetaPruner`` with ``num_heads={qkv: heads}``, ``prune_num_heads=True``,
``prune_head_dims=False``, ``GroupMagnitudeImportance(p=1)``, the same ratio in every layer, the
residual stream, patch embedding and classifier left alone, no compensation. Its ratio is bisected
to the target FLOPs; where its per-layer granularity (one head of six) misses the target by more
than one point, SNP is also run at torch-pruning's reduction (``snp@tp``); more than five points
off, torch-pruning counts as not reaching the target. FLOPs are snp's counter
(multiply-accumulates of linear/conv layers and the two attention products) on the pruned networks.

Scored on the 497 test images: top-1 and relative logit error ‖z − z_dense‖ / ‖z_dense‖.

``cost``: torchvision ``vit_b_16`` (random weights, 224x224, 64 random images): the full analysis
(tracing, statistics of the 12 head groups and 12 MLP groups, output ordering, curves) over one plain
forward pass of the same images, and each ordering's time on the same statistics of the first
encoder layer's head group (12 heads) and MLP group (3,072 units); the 12 layers have equal shapes.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/transformer.py          # docs/benchmarks/transformer.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/transformer.py --quick  # smoke run, a tiny ViT
    .venv/bin/python benchmarks/transformer.py --table                          # the docs table from the JSON
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as ``python benchmarks/transformer.py``

from benchmarks import common
from benchmarks.cost import forward_all
from benchmarks.quality import Recorder
from snp_engine import api, flops
from snp_engine.ratios import Constraints, GroupConstraint
from snp_engine.subspace import ORDERINGS
from snp_engine.training import train

VIT = {"image_size": 32, "patch_size": 4, "num_layers": 4, "num_heads": 6, "hidden_dim": 96, "mlp_dim": 288}
QUICK_VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 4, "hidden_dim": 32, "mlp_dim": 64}
EPOCHS = 30
LR = 1e-3
WEIGHT_DECAY = 0.05
SEED = 0
KINDS = ("heads", "mlp", "both")
SNP_METHODS = ("snp", "snp-nocomp")
TP_METHOD = "tp-magnitude"
CHANCE_MARGIN = 80.0  # dense top-1 (%) below this means the training failed (chance is ~10 %)


# ----------------------------------------------------------------------------------------------
# The network


def trained_vit(splits: dict[str, TensorDataset], config: dict, epochs: int, device: str = "cpu") -> nn.Module:
    """torchvision ``VisionTransformer(**config)`` (10 classes) trained on the 3x32x32 digits train
    split with AdamW; cached on disk under a name that holds the configuration."""
    import torchvision
    from safetensors.torch import load_file, save_file

    short = {
        "image_size": "i",
        "patch_size": "p",
        "num_layers": "l",
        "num_heads": "h",
        "hidden_dim": "d",
        "mlp_dim": "m",
    }
    tag = "".join(f"{short[key]}{value}" for key, value in config.items())
    path = common.CACHE_DIR / f"vit_{tag}_digits32_e{epochs}_s{SEED}.safetensors"
    torch.manual_seed(SEED)
    model = torchvision.models.VisionTransformer(num_classes=10, **config)
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    common.log(f"training a ViT {config} on 3x32x32 digits for {epochs} epochs (cached afterwards in {path})")
    loader = DataLoader(splits["train"], batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(SEED))
    train(
        model,
        loader,
        epochs=epochs,
        lr=LR,
        device=device,
        optimizer="adamw",
        weight_decay=WEIGHT_DECAY,
        label_smoothing=0.1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.cpu().eval()


def timm_copy(model: nn.Module) -> nn.Module:
    """A timm ``VisionTransformer`` computing what the torchvision ``model`` computes (the same
    weights: ``in_proj`` becomes the fused ``qkv`` Linear, ``out_proj`` ``proj``, and so on)."""
    from timm.models.vision_transformer import VisionTransformer

    layers = list(model.encoder.layers)
    attention = layers[0].self_attention
    copy_ = VisionTransformer(
        img_size=model.image_size,
        patch_size=model.patch_size,
        num_classes=model.heads.head.out_features,
        embed_dim=model.hidden_dim,
        depth=len(layers),
        num_heads=attention.num_heads,
        mlp_ratio=model.mlp_dim / model.hidden_dim,
        global_pool="token",
    )
    source = model.state_dict()
    state = {
        "cls_token": source["class_token"],
        "pos_embed": source["encoder.pos_embedding"],
        "patch_embed.proj.weight": source["conv_proj.weight"],
        "patch_embed.proj.bias": source["conv_proj.bias"],
    }
    pairs = {"ln_1": "norm1", "ln_2": "norm2", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
    pairs["self_attention.out_proj"] = "attn.proj"
    for index in range(len(layers)):
        ours, theirs = f"encoder.layers.encoder_layer_{index}.", f"blocks.{index}."
        for a, b in pairs.items():
            for part in ("weight", "bias"):
                state[f"{theirs}{b}.{part}"] = source[f"{ours}{a}.{part}"]
        state[f"{theirs}attn.qkv.weight"] = source[f"{ours}self_attention.in_proj_weight"]
        state[f"{theirs}attn.qkv.bias"] = source[f"{ours}self_attention.in_proj_bias"]
    for part in ("weight", "bias"):
        state[f"norm.{part}"] = source[f"encoder.ln.{part}"]
        state[f"head.{part}"] = source[f"heads.head.{part}"]
    copy_.load_state_dict(state, strict=True)
    return copy_.eval()


# ----------------------------------------------------------------------------------------------
# SNP


def kind_of(group_kind: str) -> str:
    return "heads" if group_kind == "heads" else "mlp"


def constraints_for(analysis: api.Analysis, kind: str) -> Constraints:
    """Lock every group not of ``kind`` at its full width (``both``: no rules)."""
    if kind == "both":
        return Constraints()
    return Constraints(
        {g.name: GroupConstraint(locked=g.units) for g in analysis.groups if kind_of(g.group.kind) != kind}
    )


def largest_reduction(analysis: api.Analysis, kind: str) -> float:
    """The FLOPs reduction when every group of ``kind`` keeps one unit (one head)."""
    keep = {g.name: 1 for g in analysis.groups if kind in ("both", kind_of(g.group.kind))}
    return 1 - analysis.cost(keep)[1] / analysis.cost()[1]


def snp_plan(analysis: api.Analysis, kind: str, target: float) -> api.Plan:
    return analysis.plan(flops_reduction=target, constraints=constraints_for(analysis, kind))


# ----------------------------------------------------------------------------------------------
# torch-pruning


def tp_prune_vit(model: nn.Module, example: torch.Tensor, ratio: float, kind: str) -> nn.Module:
    """torch-pruning's pruner on a timm ViT (a pruned copy): heads (``prune_num_heads``, whole heads,
    the same count in every layer), MLP hidden units (``fc1``'s outputs), or both at one ratio. The
    residual stream (patch embedding, ``proj`` and ``fc2`` outputs) and the classifier stay whole."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    blocks = list(pruned.blocks)
    ignored: list[nn.Module] = [pruned.head, pruned.patch_embed.proj]
    ignored += [b.attn.proj for b in blocks] + [b.mlp.fc2 for b in blocks]
    if kind == "heads":
        ignored += [b.mlp.fc1 for b in blocks]
    if kind == "mlp":
        ignored += [b.attn.qkv for b in blocks]
    heads = {b.attn.qkv: b.attn.num_heads for b in blocks} if kind != "mlp" else {}
    # the class token and position embedding stay whole: torch-pruning's warning about them is noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(
            pruned,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=1),
            pruning_ratio=ratio,  # heads only: the ratio of the q/k/v groups, whose channels go as whole heads
            global_pruning=False,
            ignored_layers=ignored,
            num_heads=heads,
            prune_num_heads=kind != "mlp",
            prune_head_dims=False,
            head_pruning_ratio=ratio if kind != "mlp" else 0.0,
        )
        pruner.step()
    for b in blocks:  # what torch-pruning's timm example does after pruning: the attention's own counts
        if kind != "mlp":
            b.attn.num_heads = pruner.num_heads[b.attn.qkv]
            if b.attn.num_heads == 0:
                raise ValueError(f"ratio {ratio}: torch-pruning removed every head of a layer")
        b.attn.head_dim = b.attn.qkv.out_features // (3 * b.attn.num_heads)
        if hasattr(b.attn, "attn_dim"):
            b.attn.attn_dim = b.attn.num_heads * b.attn.head_dim
    return pruned.eval()


def tp_ratio_for(model: nn.Module, example: torch.Tensor, target: float, kind: str) -> tuple[float, float]:
    """Bisect torch-pruning's ratio until the MACs reduction is within 0.5 % of ``target``; the
    ratio whose reduction came nearest."""
    base = flops.count(model, example)[1]
    low, high, best = 0.0, 0.95, (0.0, 0.0)
    for _ in range(14):
        middle = (low + high) / 2
        try:
            reduction = 1 - flops.count(tp_prune_vit(model, example, middle, kind), example)[1] / base
        except ValueError:  # a layer lost every head: too far
            high = middle
            continue
        if abs(reduction - target) < abs(best[1] - target):
            best = (middle, reduction)
        if abs(reduction - target) < 0.005:
            break
        low, high = (middle, high) if reduction < target else (low, middle)
    return best


# ----------------------------------------------------------------------------------------------
# One network


def run_vit(args: argparse.Namespace) -> dict:
    device = args.device
    splits = common.digits_for("vit")
    config = QUICK_VIT if args.quick else VIT
    model = trained_vit(splits, config, args.epochs, device).to(device).eval()
    test = splits["test"]
    example = common.example_input(test, device)
    dense_logits = common.logits_of(model, test.tensors[0], device)
    dense = common.score(model, test, dense_logits, device)
    common.log(f"vit: dense top-1 {dense['top1']:.1f} %")
    if not args.quick and dense["top1"] < CHANCE_MARGIN:
        raise RuntimeError(f"the ViT reached only {dense['top1']:.1f} % top-1: training failed")
    twin = timm_copy(model.cpu()).to(device)
    twin_error = float((common.logits_of(twin, test.tensors[0], device) - dense_logits).abs().max())
    params, macs = flops.count(model, example)

    rows, status = Recorder(), {}
    ratios = {(k, t): tp_ratio_for(twin, example, t, k) for k in args.kinds for t in args.targets}
    ceilings: dict[str, float] = {}
    for seed in args.seeds:
        calibration = common.random_subset(splits["pool"], args.samples, seed)
        start = time.perf_counter()
        analysis = api.analyze(model, calibration, device=device, seed=seed)
        rows.add(("analyze",), seconds=time.perf_counter() - start)
        for kind in args.kinds:
            ceilings[kind] = largest_reduction(analysis, kind)
            for target in args.targets:
                tp_ratio, tp_reduction = ratios[kind, target]
                tp_reached = abs(tp_reduction - target) <= 0.05
                status.setdefault(kind, {})[str(target)] = {
                    "reached": target <= ceilings[kind] - 1e-6,
                    "largest_reduction": ceilings[kind],
                    "tp_ratio": tp_ratio,
                    "tp_reduction": tp_reduction,
                    "tp_reached": tp_reached,
                }
                wanted = {"snp": target, "snp-nocomp": target}
                if tp_reached and abs(tp_reduction - target) > 0.01:
                    wanted["snp@tp"] = tp_reduction
                for method, reduction in wanted.items():
                    if reduction > ceilings[kind] - 1e-6:
                        continue
                    plan = snp_plan(analysis, kind, reduction)
                    options = {"compensate": False} if method == "snp-nocomp" else {}
                    start = time.perf_counter()
                    pruned = api.prune(model, analysis, plan, data=calibration, device=device, **options).model
                    seconds = time.perf_counter() - start
                    rows.add(
                        (kind, method, target),
                        flops_reduction=1 - flops.count(pruned, example)[1] / macs,
                        plan_reduction=plan.flops_reduction,
                        heads_kept=sum(plan.keep[g.name] for g in analysis.groups if g.group.kind == "heads"),
                        mlp_kept=sum(plan.keep[g.name] for g in analysis.groups if g.group.kind != "heads"),
                        seconds=seconds,
                        **common.score(pruned, test, dense_logits, device),
                    )
                    del pruned
                # torch-pruning's magnitude pruner does not use the calibration images: once
                if tp_reached and seed == args.seeds[0]:
                    start = time.perf_counter()
                    pruned = tp_prune_vit(twin, example, tp_ratio, kind)
                    seconds = time.perf_counter() - start
                    rows.add(
                        (kind, TP_METHOD, target),
                        flops_reduction=1 - flops.count(pruned, example)[1] / macs,
                        heads_kept=sum(b.attn.num_heads for b in pruned.blocks),
                        mlp_kept=sum(b.mlp.fc1.out_features for b in pruned.blocks),
                        seconds=seconds,
                        **common.score(pruned, test, dense_logits, device),
                    )
        common.log(f"vit: seed {seed} done")
    return {
        "config": config,
        "epochs": args.epochs,
        "dense": dense,
        "params": params,
        "macs": macs,
        "timm_copy_max_abs_logit_diff": twin_error,
        "groups": {g.name: {"kind": g.group.kind, "units": g.units} for g in analysis.groups},
        "largest_reduction": ceilings,
        "status": status,
        "results": rows.nested(),
    }


# ----------------------------------------------------------------------------------------------
# Analysis cost on vit_b_16


def run_cost(args: argparse.Namespace) -> dict:
    """The analysis over one plain forward pass on torchvision's vit_b_16 (random weights)."""
    import torchvision

    torch.manual_seed(0)
    if args.quick:
        model, size = torchvision.models.VisionTransformer(num_classes=10, **QUICK_VIT), 32
    else:
        model, size = torchvision.models.vit_b_16(weights=None), 224
    model = model.to(args.device).eval()
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.cost_images, 3, size, size, generator=gen)
    data = TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    forward_all(model, images[:8], args.device)  # warm-up, not timed
    forward = common.time_call(
        lambda: forward_all(model, images, args.device), device=args.device, warmup=0, min_reps=2, min_seconds=0
    )
    forward["seconds"] = forward["median"]
    common.log(f"cost: forward over {len(images)} images {forward['seconds']:.1f} s")
    start = time.perf_counter()
    analysis = api.analyze(model, data, device=args.device)
    seconds = time.perf_counter() - start
    common.log(f"cost: analysis {seconds:.1f} s")
    # every encoder layer has the same shapes: each ordering is timed on the first layer's head group
    # and MLP group (the whole network's time is about ``layers`` times that)
    first = tuple(g for g in analysis.groups if ".encoder_layer_0." in f".{g.name}.")
    one_layer = dataclasses.replace(analysis, groups=first)
    orderings = {}
    for ordering in [o for o in ORDERINGS if o != "identity"]:
        found = {}
        for group in first:
            start = time.perf_counter()
            dataclasses.replace(one_layer, groups=(group,)).reorder(ordering)
            found[group.group.kind] = time.perf_counter() - start
        orderings[ordering] = found
        common.log(f"cost: {ordering} ordering of one layer {sum(found.values()):.1f} s")
    return {
        "model": "vit_b_16" if not args.quick else "tiny VisionTransformer",
        "input": [3, size, size],
        "images": len(images),
        "macs": flops.count(model, images[:1].to(args.device))[1],
        "groups": {g.name: {"kind": g.group.kind, "units": g.units, "samples": g.samples} for g in analysis.groups},
        "forward": forward,
        "analysis_seconds": seconds,
        "ratio": seconds / forward["seconds"],
        "ordering": analysis.ordering,
        "layers": len(model.encoder.layers),
        "reorder_seconds_one_layer": orderings,
    }


# ----------------------------------------------------------------------------------------------
# Table


def table(results: dict) -> str:
    """The docs table: per kind and target, top-1 / logit error / measured FLOPs reduction."""
    vit = results["vit"]
    lines = [
        "| pruned | target | SNP top-1 | SNP error | no comp. top-1 | no comp. error | torch-pruning top-1 "
        "| tp error | tp FLOPs | SNP at tp's FLOPs top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, by_method in _by_kind(vit).items():
        for target in sorted(vit["status"][kind], key=float):
            cells = []
            for method in ("snp", "snp-nocomp", TP_METHOD):
                row = by_method.get(method, {}).get(target)
                if row is None:
                    cells += ["unreachable", "—"]
                    continue
                spread = f" ± {row['top1']['std']:.1f}" if row["top1"]["std"] > 0 else ""
                cells += [f"{row['top1']['mean']:.1f}{spread}", f"{row['fidelity']['mean']:.3f}"]
                if method == TP_METHOD:
                    cells.append(f"−{100 * row['flops_reduction']['mean']:.0f} %")
            if by_method.get(TP_METHOD, {}).get(target) is None:
                cells.append("—")
            at_tp = by_method.get("snp@tp", {}).get(target)
            cells.append(f"{at_tp['top1']['mean']:.1f}" if at_tp else "—")
            lines.append(f"| {kind} | −{100 * float(target):.0f} % | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _by_kind(vit: dict) -> dict:
    return {kind: found for kind, found in vit["results"].items() if kind in KINDS}


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--seeds", type=int, default=3, help="calibration draws (seeds 0..N-1)")
    parser.add_argument("--samples", type=int, default=300, help="calibration images per draw")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--cost-images", type=int, default=64)
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["vit", "cost"],
        choices=["vit", "cost"],
        help="what to run; a part left out is kept from an existing --out file",
    )
    parser.add_argument("--table", action="store_true", help="print the docs table from --out and stop")
    common.add_run_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.targets, args.seeds, args.samples, args.epochs, args.cost_images = [0.3], 1, 64, 1, 8
    args.seeds = list(range(args.seeds))
    common.default_out(args, "transformer")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.table:
        results = json.loads(args.out.read_text(encoding="utf-8"))
        print(table(results))
        return results
    common.set_threads(args.threads)
    start = time.perf_counter()
    results = common.run_header("transformer", args, args.device)
    earlier = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    for part, run in (("vit", run_vit), ("cost", run_cost)):
        if part in args.parts:
            results[part] = run(args)
            results[part]["machine"], results[part]["settings"] = results["machine"], results["settings"]
        elif part in earlier:
            results[part] = earlier[part]
        results["wall_seconds"] = time.perf_counter() - start
        results["load_average_end"] = os.getloadavg()[0]
        common.write_json(args.out, results)  # what finished survives an interrupted run
    common.log(f"transformer: wrote {args.out} in {results['wall_seconds']:.0f} s")
    return results


if __name__ == "__main__":
    main()
