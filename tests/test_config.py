"""dissect.config: the one place a default is written; the CLI's --help shows the same."""

from __future__ import annotations

import dataclasses

import pytest

from dissect import config
from dissect.ablate.config import AblationConfig
from dissect.cli import COMMANDS, build_parser
from dissect.errors import DissectError


@dataclasses.dataclass(frozen=True)
class RunIoU:
    """The one IoUConfig default ``dissect run --iou`` takes (its --align has none: it is refused
    without --iou)."""

    permutations: int = config.IoUConfig().permutations


#: Which config classes hold each subcommand's defaults (the fields named like the flags).
SOURCES = {
    "ablate": [AblationConfig(), config.ResumeConfig(), config.EvaluateConfig()],
    "demo": [config.DemoConfig()],
    "layers": [],
    "data": [],
    "evaluate": [config.EvaluateConfig()],
    "run": [config.RunConfig(), config.ResumeConfig(), RunIoU()],
    "stats": [config.DetectorRule()],
    "autolabel": [config.IoUConfig(), config.ResumeConfig(), config.DetectorRule()],
    "report": [config.ReportConfig(), config.DetectorRule()],
    "segment": [config.SegmentConfig()],
    "export": [config.ExportConfig(), config.ExportConfig().segment],
    "import": [config.ImportConfig()],
    "rf": [config.OcclusionConfig(), config.RfOptions(), config.ResumeConfig()],
    "compare": [config.CompareConfig(), config.DetectorRule()],
    "explain": [config.ExplainConfig(), config.DetectorRule()],
}


def subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def defaults(configs: list) -> dict:
    """Field name -> default over ``configs`` (the first class naming a field wins)."""
    found = {}
    for made in configs:
        for field in dataclasses.fields(made):
            value = getattr(made, field.name)
            if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
                value = ",".join(value)  # comma-separated on the command line
            found.setdefault(field.name, value)
    return found


def test_every_subcommand_is_checked():
    assert set(SOURCES) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_defaults_equal_the_config_fields(command):
    parser = subparsers()[command]
    fields = defaults(SOURCES[command])
    options = [
        action
        for action in parser._actions
        if action.option_strings and action.dest != "help" and action.nargs != 0
    ]
    missing = []
    for action in options:
        if action.default is None and not fields.get(action.dest):
            continue  # no default at all (an optional value, or a required flag)
        if action.dest not in fields:
            missing.append(action.dest)
            continue
        assert action.default == fields[action.dest], (command, action.dest)
        value = fields[action.dest]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        if action.help and value not in (None, ""):  # the help says the same number
            text = action.help.replace("%(default)s", str(action.default))
            assert shown in text or "default" in text, (command, action.dest, text)
    assert not missing, f"{command}: defaults written outside dissect.config: {missing}"


def test_library_defaults_come_from_the_config():
    import inspect

    from dissect.explain import explain_image
    from dissect.report import write_report
    from dissect.rf import receptive_fields
    from dissect.segment import iter_segments, write_segments

    segment, explain = config.SegmentConfig(), config.ExplainConfig()
    assert inspect.signature(write_segments).parameters["top"].default == segment.top
    assert "config" in inspect.signature(iter_segments).parameters
    assert inspect.signature(receptive_fields).parameters["device"].default == "auto"
    assert inspect.signature(explain_image).parameters["top"].default == explain.top
    assert inspect.signature(write_report).parameters["top"].default == config.ReportConfig.top


def test_image_size_is_height_width_inside():
    assert config.image_hw(224) == (224, 224)
    assert config.image_hw((240, 320)) == (240, 320)
    assert config.image_hw([240, 320]) == (240, 320)


def test_configs_refuse_bad_values_with_the_flag_named():
    with pytest.raises(DissectError, match="--topk"):
        config.RunConfig(topk=0)
    with pytest.raises(DissectError, match="--checkpoint-every"):
        config.ResumeConfig(checkpoint_every=0)
    with pytest.raises(DissectError, match="--permutations"):
        config.IoUConfig(permutations=-1)
    with pytest.raises(DissectError, match="--rule"):
        config.SegmentConfig(rule="box")
    with pytest.raises(DissectError, match="--occluder 300 px"):
        config.OcclusionConfig(occluder=300).check_image((240, 320))


def test_detector_rule_takes_loose_values():
    rule = config.DetectorRule(max_p=0.05)
    assert rule.replace(min_iou=0.1, max_p=None) == config.DetectorRule(min_iou=0.1, max_p=0.05)
    assert rule.describe() == "IoU >= 0.04, p <= 0.05"
    assert rule.types().keys[0] == "color"
