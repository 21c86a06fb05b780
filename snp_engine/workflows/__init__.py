"""Every job snp does, once: the command line and the desktop app both call these functions.

    prepared = prepare("torchvision:resnet18@w.pth", "npz:calib.npz")   # model + data + input + checks
    analysis = analyse(prepared, AnalysisOptions())
    plan = make_plan(analysis, PlanTarget.parse("flops", 0.5))
    pruned = prune(prepared, analysis, plan)
    # or first remove_blocks(prepared, N), then the same on its .prepared (see blockjobs)
    result = compare(prepared, pruned)                                   # top-1/5, fidelity, params, FLOPs
    export(prepared, pruned, "small.safetensors", settings={...}, metrics=result.metrics())

``prepare`` applies the one input-size rule (:mod:`snp_engine.inputs`), says what it adapted, checks
the labels against the model's classes, and evaluates the dense model on the first calibration
images: near-chance accuracy there means the preprocessing, normalisation or input size differs
from training, which is said loudly before any long work. Jobs take a
:class:`~snp_engine.progress.Reporter` for progress and cancel, and return frozen results.
"""

from snp_engine.results import Pruned, PruningRecord
from snp_engine.workflows.blockjobs import (
    BlockChoice,
    BlocksRemoved,
    block_scores,
    blocks_cost,
    channel_target,
    choose_blocks,
    inner_groups,
    plan_with_blocks,
    prune_with_blocks,
    removable_blocks,
    remove_blocks,
    with_blocks,
)
from snp_engine.workflows.choices import (
    ALLOCATIONS,
    COMPENSATION_HELP,
    COUPLED_HELP,
    TARGET_KINDS,
    AnalysisOptions,
    Compensation,
    PlanTarget,
)
from snp_engine.workflows.jobs import (
    FineTuned,
    Inspection,
    analyse,
    export,
    finetune,
    inspect,
    make_plan,
    no_groups_reason,
    output_kind,
    prune,
    rebuildable,
)
from snp_engine.workflows.measuring import Comparison, compare, cost, fidelity, latencies, score
from snp_engine.workflows.preparation import (
    CHANCE_FACTOR,
    DENSE_CHECK_SAMPLES,
    DenseCheck,
    Prepared,
    check_dense,
    check_runs,
    class_warnings,
    fit,
    input_shape_of,
    load_model,
    open_data,
    prepare,
    sharded,
)
from snp_engine.workflows.sweeps import sweep

__all__ = [
    "ALLOCATIONS",
    "CHANCE_FACTOR",
    "COMPENSATION_HELP",
    "COUPLED_HELP",
    "DENSE_CHECK_SAMPLES",
    "TARGET_KINDS",
    "AnalysisOptions",
    "BlockChoice",
    "BlocksRemoved",
    "Comparison",
    "Compensation",
    "DenseCheck",
    "FineTuned",
    "Inspection",
    "PlanTarget",
    "Prepared",
    "Pruned",
    "PruningRecord",
    "analyse",
    "block_scores",
    "blocks_cost",
    "channel_target",
    "check_dense",
    "check_runs",
    "choose_blocks",
    "class_warnings",
    "compare",
    "cost",
    "export",
    "fidelity",
    "finetune",
    "fit",
    "inner_groups",
    "input_shape_of",
    "inspect",
    "latencies",
    "load_model",
    "make_plan",
    "no_groups_reason",
    "open_data",
    "output_kind",
    "plan_with_blocks",
    "prepare",
    "prune",
    "prune_with_blocks",
    "rebuildable",
    "removable_blocks",
    "remove_blocks",
    "score",
    "sharded",
    "sweep",
    "with_blocks",
]
