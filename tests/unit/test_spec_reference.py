"""docs/spec_reference.md is generated from the models and must match them."""

from pathlib import Path

from distml.spec.reference import markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "spec_reference.md"


def test_reference_is_up_to_date():
    assert DOC.read_text() == markdown(), (
        "docs/spec_reference.md is stale: run `distml schema --markdown > docs/spec_reference.md`"
    )


def test_reference_lists_every_field_with_bounds():
    text = markdown()
    assert "| `data.split.valid` | float | `0.2` |" in text and "(ge 0, lt 1)" in text
    assert "## kind: `xgboost`" in text and "`model.early_stopping_rounds`" in text
