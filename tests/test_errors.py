"""nsarm_core.errors: the error types and the one "did you mean" helper every registry lookup uses."""

from __future__ import annotations

import pytest

from nsarm_core.errors import ConfigError, did_you_mean, unknown_choice
from nsarm_core.eval.metrics import get_metric
from nsarm_core.models.nsarm import get_preset
from nsarm_core.scales import get_named_schedule
from nsarm_core.weights import get_model_spec


def test_did_you_mean_names_the_closest_candidate_or_nothing() -> None:
    assert did_you_mean("nsarm8b", ["nsarm-8b", "nsarm-tiny"]) == " Did you mean 'nsarm-8b'?"
    assert did_you_mean("zzzz", ["nsarm-8b"]) == ""


def test_unknown_choice_message() -> None:
    err = unknown_choice("model", "nsarm8b", ["nsarm-8b", "nsarm-tiny"], note="(see `nsarm models`)")
    assert isinstance(err, ConfigError)
    assert str(err) == (
        "unknown model 'nsarm8b'; valid: nsarm-8b, nsarm-tiny. Did you mean 'nsarm-8b'? (see `nsarm models`)"
    )


@pytest.mark.parametrize(
    "lookup,typo,expected",
    [
        (get_model_spec, "nsarm-tinny", "unknown model 'nsarm-tinny'; valid: "),
        (get_preset, "nsarm-tinny", "unknown NSARM preset 'nsarm-tinny'; valid: "),
        (get_named_schedule, "sr-1025", "unknown scale schedule 'sr-1025'; valid: "),
        (get_metric, "musiqq", "unknown metric 'musiqq'; valid names: "),
    ],
)
def test_registry_lookups_share_the_helper(lookup, typo: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="Did you mean") as info:
        lookup(typo)
    assert str(info.value).startswith(expected)
