import pytest
import torch

from services.embedding.head import FusionHead


def test_fusion_head_outputs_unit_rows_of_512():
    head = FusionHead([384, 384]).eval()
    embeddings = head([torch.randn(5, 384), torch.randn(5, 384)])
    assert embeddings.shape == (5, 512)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(5), atol=1e-5)


def test_fusion_head_layers_follow_the_method():
    head = FusionHead([384, 384])
    assert head.linear.in_features == 768
    assert head.linear.out_features == 512
    assert isinstance(head.norm, torch.nn.BatchNorm1d)
    assert isinstance(head.activation, torch.nn.GELU)


def test_fusion_head_normalises_each_branch_first():
    head = FusionHead([8, 8]).eval()
    first, second = torch.randn(3, 8), torch.randn(3, 8)
    scaled = head([first * 100.0, second * 0.01])
    assert torch.allclose(head([first, second]), scaled, atol=1e-5)


def test_fusion_head_accepts_a_single_branch():
    head = FusionHead([1280]).eval()
    assert head([torch.randn(2, 1280)]).shape == (2, 512)


def test_fusion_head_rejects_wrong_branch_count():
    head = FusionHead([8, 8])
    with pytest.raises(ValueError, match="expects 2 branch feature batches"):
        head([torch.randn(2, 8)])
