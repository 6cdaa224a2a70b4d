"""Landmark sets: which landmarks a procedure must photo-document, read from package data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Literal


@dataclass(frozen=True)
class Landmark:
    """One landmark: `required` ones must be documented, `observed` ones are only counted."""

    code: str
    name: str
    description: str
    role: Literal["required", "observed"]
    source: str


@dataclass(frozen=True)
class LandmarkSet:
    """A named list of landmarks from one guideline or data set, for one procedure kind."""

    code: str
    name: str
    procedure_kind: str
    source: str
    landmarks: tuple[Landmark, ...]

    @property
    def required(self) -> tuple[Landmark, ...]:
        return tuple(landmark for landmark in self.landmarks if landmark.role == "required")

    @property
    def observed(self) -> tuple[Landmark, ...]:
        return tuple(landmark for landmark in self.landmarks if landmark.role == "observed")


class UnknownLandmarkSetError(KeyError):
    """No landmark set has the requested code."""

    def __init__(self, code: str) -> None:
        known = ", ".join(sorted(landmark_sets()))
        super().__init__(f"unknown landmark set {code!r}: use one of {known}")
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


def _parse(document: dict) -> LandmarkSet:
    landmarks = tuple(
        Landmark(
            code=item["code"],
            name=item["name"],
            description=item["description"],
            role=item["role"],
            source=item.get("source", document["source"]),
        )
        for item in document["landmarks"]
    )
    codes = [landmark.code for landmark in landmarks]
    if len(set(codes)) != len(codes):
        raise ValueError(f"landmark set {document['code']!r} lists a landmark code twice: {codes}")
    return LandmarkSet(
        code=document["code"],
        name=document["name"],
        procedure_kind=document["procedure_kind"],
        source=document["source"],
        landmarks=landmarks,
    )


@lru_cache(maxsize=1)
def landmark_sets() -> dict[str, LandmarkSet]:
    """Load every landmark set shipped in `services/coverage/landmark_sets/`, by code."""
    folder = resources.files(__package__) / "landmark_sets"
    sets = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".json"):
            landmark_set = _parse(json.loads(entry.read_text(encoding="utf-8")))
            sets[landmark_set.code] = landmark_set
    return sets


def get_landmark_set(code: str) -> LandmarkSet:
    """Return the landmark set `code` or raise UnknownLandmarkSetError listing the known ones."""
    try:
        return landmark_sets()[code]
    except KeyError:
        raise UnknownLandmarkSetError(code) from None


def known_landmark_codes() -> set[str]:
    """Return every landmark code of every set: the labels a reference image may carry."""
    return {landmark.code for landmark_set in landmark_sets().values() for landmark in landmark_set.landmarks}
