"""Weighted k-NN labelling."""

import uuid

import pytest

from services.coverage.knn import vote
from services.vectors import VectorHit


def hit(label: str, score: float) -> VectorHit:
    return VectorHit(id=uuid.uuid4(), score=score, payload={"label": label})


def test_vote_without_neighbours_is_none():
    assert vote([], temperature=0.05, evidence_count=3) is None


def test_closer_neighbours_outweigh_more_numerous_ones():
    hits = [hit("cecum", 0.95), hit("polyp", 0.80), hit("polyp", 0.79), hit("polyp", 0.78)]
    result = vote(hits, temperature=0.05, evidence_count=3)
    assert result.label == "cecum"
    assert 0.5 < result.score < 1.0


def test_vote_shares_sum_to_one_for_single_label():
    result = vote([hit("polyp", 0.9), hit("polyp", 0.7)], temperature=0.05, evidence_count=3)
    assert result.label == "polyp"
    assert result.score == pytest.approx(1.0)


def test_evidence_lists_winning_label_best_first():
    hits = [hit("polyp", 0.9), hit("cecum", 0.85), hit("polyp", 0.8), hit("polyp", 0.7), hit("polyp", 0.6)]
    result = vote(hits, temperature=0.05, evidence_count=3)
    assert [item.label for item in result.evidence] == ["polyp"] * 3
    assert [item.similarity for item in result.evidence] == [0.9, 0.8, 0.7]
