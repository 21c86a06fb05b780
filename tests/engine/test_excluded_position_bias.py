"""Swin V2's position-bias MLP: its hidden units (``cpb_mlp.0``) are computed from the window
coordinates, not the images; they are listed as excluded with that reason, never as a group."""

from __future__ import annotations

import torch
from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2

from snp_engine.groups import find_groups


def test_the_position_bias_mlps_hidden_units_are_excluded_with_the_reason():
    torch.manual_seed(0)
    model = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=[4, 4],
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
        num_classes=5,
    ).eval()
    groups, excluded = find_groups(model, torch.zeros(1, 3, 32, 32))
    hidden = {f"features.{stage}.0.attn.cpb_mlp.0" for stage in (1, 3)}
    found = {e.name: e for e in excluded if "cpb_mlp" in e.name}
    assert set(found) == hidden
    assert all(e.units == 512 and "position-bias MLP" in e.reason and "coordinates" in e.reason for e in found.values())
    assert not any("cpb_mlp" in g.name for g in groups)
    assert {"features.1.0.attn", "features.3.0.attn"} <= {g.name for g in groups}  # the heads stay prunable
