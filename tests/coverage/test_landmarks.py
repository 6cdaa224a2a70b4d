"""The landmark sets shipped with the package."""

import pytest

from services.coverage.landmarks import UnknownLandmarkSetError, get_landmark_set, landmark_sets


@pytest.mark.parametrize(
    ("code", "kind", "required"),
    [
        ("esge-upper-gi", "egd", 10),
        ("bsg-augis-upper-gi", "egd", 8),
        ("colonoscopy-completion", "colonoscopy", 4),
        ("hyperkvasir-lower-gi", "colonoscopy", 1),
    ],
)
def test_landmark_set_sizes(code, kind, required):
    landmark_set = get_landmark_set(code)
    assert landmark_set.procedure_kind == kind
    assert len(landmark_set.required) == required


def test_every_landmark_has_name_description_and_source():
    for landmark_set in landmark_sets().values():
        for landmark in landmark_set.landmarks:
            assert landmark.name, landmark.code
            assert landmark.description, landmark.code
            assert landmark.source, landmark.code


def test_hyperkvasir_set_matches_shared_classes():
    landmark_set = get_landmark_set("hyperkvasir-lower-gi")
    assert [landmark.code for landmark in landmark_set.required] == ["normal-cecum"]
    assert {landmark.code for landmark in landmark_set.observed} == {"polyp", "bbps-0-1", "bbps-2-3", "impacted-stool"}


def test_colonoscopy_completion_landmarks():
    codes = [landmark.code for landmark in get_landmark_set("colonoscopy-completion").required]
    assert codes == ["cecum-appendiceal-orifice", "ileocecal-valve", "terminal-ileum", "rectum-retroflexion"]


def test_unknown_set_names_known_ones():
    with pytest.raises(UnknownLandmarkSetError) as raised:
        get_landmark_set("nope")
    assert "'nope'" in str(raised.value)
    assert "esge-upper-gi" in str(raised.value)
