"""Which rule the report and ``dissect compare`` count detectors by, and the sentence saying so.

Where every automatic label has a Benjamini-Hochberg q-value (``dissect autolabel`` with
permutations), a unit counts as a detector when its IoU reaches ``min_iou`` *and* its q-value is
at most the FDR level (:data:`~dissect.config.FDR`, 0.05 by default): the *significance rule*,
which bounds the expected share of false detectors in each layer. Where some lack one (labels of
``dissect run --iou`` or ``autolabel --permutations 0``), the IoU rule alone is used for every
network, and the page says why. :func:`counting_rule` chooses; :attr:`CountingRule.text` is what
a person reads on the page and in the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from .config import FDR, DetectorRule


@dataclass(frozen=True)
class CountingRule:
    """The rule detectors were counted by.

    Attributes
    ----------
    rule : DetectorRule
        The rule applied (its ``fdr`` set when the significance rule is used).
    text : str
        One sentence for the page: the thresholds and, when the IoU rule is used, why.
    significance : bool
        Whether q-values were used.
    """

    rule: DetectorRule
    text: str
    significance: bool


def has_q_values(labels: pd.DataFrame) -> bool:
    """Whether the table has automatic labels and every one of them has a q-value."""
    if labels.empty or "source" not in labels:
        return False
    automatic = labels[(labels["source"] == "iou") & labels["label"].notna()]
    if automatic.empty or "q_value" not in automatic:
        return False
    return bool(pd.to_numeric(automatic["q_value"], errors="coerce").notna().all())


def counting_rule(
    tables: Sequence[pd.DataFrame], rule: DetectorRule, significance: bool = True
) -> CountingRule:
    """The rule to count the detectors of ``tables`` (one labels table per network) by.

    Parameters
    ----------
    tables : sequence of DataFrame
        The labels tables counted with one rule (a report: one; a comparison: one per network).
    rule : DetectorRule
        The rule asked for. With its ``fdr`` set, that level is used as given (labels without a
        q-value then never count).
    significance : bool
        Use the significance rule at :data:`~dissect.config.FDR` where every table's automatic
        labels have q-values (False: the IoU rule, as asked with ``--fdr none``).

    Returns
    -------
    CountingRule
    """
    crowd = any(_has_source(table, "crowd") for table in tables)
    automatic = any(_has_source(table, "iou") for table in tables)
    available = all(has_q_values(table) for table in tables) and automatic
    if rule.fdr is None and significance and available:
        rule = rule.replace(fdr=FDR)
    used = rule.fdr is not None
    text = "Detectors counted by: "
    if automatic:
        text += f"IoU \u2265 {rule.min_iou:g}"
        text += f" and permutation p \u2264 {rule.max_p:g}" if rule.max_p is not None else ""
        if used:
            text += (
                f" and q-value \u2264 {rule.fdr:g} (the significance rule: Benjamini-Hochberg "
                f"over each layer's units, at most {100 * rule.fdr:g}% false detectors expected)"
            )
            text += "; labels without a q-value never count" if not available else ""
        elif not significance:
            text += " (the IoU rule, as asked: q-values not used)"
        else:
            text += (
                " (the IoU rule: some automatic labels have no q-value, as from dissect run "
                "--iou or autolabel --permutations 0; dissect autolabel DIR writes them)"
            )
    if crowd:
        text += "; crowd labels" if automatic else "crowd labels"
        text += f" with precision \u2265 {rule.min_precision:g}"
    return CountingRule(rule, text + ".", used)


def _has_source(table: pd.DataFrame, source: str) -> bool:
    return "source" in table and bool((table["source"] == source).any())
