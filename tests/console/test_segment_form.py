"""The segment builder's binding (worker.console.segment_form): rows -> the rules document -> rows,
what rows cannot show, what an empty input is called, and where the service's problems go."""

from __future__ import annotations

import pytest

from worker.console import segment_form
from worker.console.segment_form import Row
from worker.errors import FieldProblem

ROWS_AND_RULES = [
    (Row("attr_equals", attribute="city", value="Riyadh"), {"attribute": "city", "equals": "Riyadh"}),
    (Row("attr_in", attribute="city", value="Riyadh, Jeddah"), {"attribute": "city", "in": ["Riyadh", "Jeddah"]}),
    (Row("attr_exists", attribute="plan"), {"attribute": "plan", "exists": True}),
    (Row("attr_exists", attribute="plan", negate=True), {"not": {"attribute": "plan", "exists": True}}),
    (Row("tag", value="vip"), {"tag": "vip"}),
    (Row("received", campaign="12"), {"received": {"campaign": 12}}),
    (Row("delivered", campaign="12"), {"delivered": {"campaign": 12}}),
    (Row("read", campaign="12", negate=True), {"not": {"read": {"campaign": 12}}}),
    (Row("tapped", campaign="12"), {"tapped": {"campaign": 12}}),
    (Row("tapped", campaign="12", button="reserve"), {"tapped": {"campaign": 12, "button": "reserve"}}),
    (Row("window"), {"window": "open"}),
    (Row("last_inbound_within", value="7d"), {"last_inbound_within": "7d"}),
    (Row("last_sent_within", value="12h", negate=True), {"not": {"last_sent_within": "12h"}}),
    (Row("segment", segment="5"), {"segment": 5}),
]


def _form(rows: list[Row], match: str = "all") -> dict[str, str]:
    form = {"match": match, "rules_source": "rows"}
    for i, row in enumerate(rows):
        n = i * 3   # a removed row leaves a gap in the numbering
        form.update({f"row-{n}-kind": row.kind, f"row-{n}-attribute": row.attribute, f"row-{n}-value": row.value,
                     f"row-{n}-campaign": row.campaign, f"row-{n}-button": row.button, f"row-{n}-segment": row.segment})
        if row.negate:
            form[f"row-{n}-not"] = "on"
    return form


@pytest.mark.parametrize("row, rule", ROWS_AND_RULES,
                         ids=[r.kind + ("-not" if r.negate else "") for r, _ in ROWS_AND_RULES])
def test_each_row_writes_its_rule_and_the_rule_reads_back_as_the_row(row: Row, rule: dict) -> None:
    bound = segment_form.bind(_form([row], match="any"))
    assert bound.ok and bound.rules == {"any": [rule]}
    assert segment_form.rows_from_rules(bound.rules) == ("any", [row])


def test_rows_keep_their_order_and_the_json_is_the_document() -> None:
    rows = [r for r, _ in ROWS_AND_RULES]
    bound = segment_form.bind(_form(rows))
    assert bound.rules == {"all": [rule for _, rule in ROWS_AND_RULES]}
    assert segment_form.bind({"rules_source": "json", "rules_json": bound.json_text}).rows == rows


def test_equivalent_documents_read_as_the_rows_that_mean_them() -> None:
    assert segment_form.rows_from_rules({"tag": "vip"}) == ("all", [Row("tag", value="vip")])
    assert segment_form.rows_from_rules({"window": "closed"}) == ("all", [Row("window", negate=True)])
    assert segment_form.rows_from_rules({"attribute": "plan", "exists": False}) == (
        "all", [Row("attr_exists", attribute="plan", negate=True)])
    assert segment_form.rows_from_rules({"not": {"attribute": "plan", "exists": False}}) == (
        "all", [Row("attr_exists", attribute="plan")])


@pytest.mark.parametrize("doc", [
    {"all": [{"any": [{"tag": "a"}, {"tag": "b"}]}, {"tag": "c"}]},   # nested
    {"not": {"not": {"tag": "vip"}}},
    {"all": []},
    {"tag": "vip", "window": "open"},
    {"tapped": {"campaign": "12"}},
    [1, 2],
    "vip",
])
def test_what_rows_cannot_show_is_left_to_the_json(doc) -> None:  # noqa: ANN001
    assert segment_form.rows_from_rules(doc) is None
    bound = segment_form.bind({"rules_source": "json", "rules_json": segment_form.pretty(doc)})
    assert bound.rules == doc and not bound.representable and bound.rows == []


def test_an_input_left_empty_is_named_in_words_next_to_its_row() -> None:
    bound = segment_form.bind(_form([Row("tag", value="vip"), Row("attr_equals", value="Riyadh"), Row("tapped")]))
    assert bound.rules is None
    assert bound.row_problems == {1: ["Enter the attribute's name (e.g. city)."], 2: ["Choose a campaign."]}
    assert segment_form.bind({"match": "all"}).general == ["Add at least one condition."]


def test_json_that_cannot_be_read_says_where() -> None:
    bound = segment_form.bind({"rules_source": "json", "rules_json": '{"all": [\n  {"tag": "vip"},\n]}'})
    assert bound.rules is None and bound.general == ["The JSON cannot be read: line 3, column 1: Expecting value."]


def test_the_services_problems_go_to_their_row_with_the_input_named() -> None:
    bound = segment_form.bind(_form([Row("tag", value="vip"), Row("tapped", campaign="12", button="x"),
                                     Row("last_sent_within", value="7x", negate=True)]))
    by_row, name, general = segment_form.row_problems([
        FieldProblem("name", "a segment is already named 'VIPs'; choose another name"),
        FieldProblem("rules.all[1].tapped.button", "campaign 12 has no button 'x'; its buttons are: yes, no"),
        FieldProblem("rules.all[2].not.last_sent_within", "'7x' is not a duration"),
        FieldProblem("rules", "have more than 200 rules; the limit is 200"),
    ], bound)
    assert by_row == {1: ["Button: campaign 12 has no button 'x'; its buttons are: yes, no"],
                      2: ["Within: '7x' is not a duration"]}
    assert name == ["a segment is already named 'VIPs'; choose another name"]
    assert general == ["rules: have more than 200 rules; the limit is 200"]
