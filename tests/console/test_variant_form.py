"""The New campaign form's A/B test binding (worker.console.variant_form): which variants a posted
form holds, each as message.json, the test's options as the service takes them, and where each of
the service's problems goes (a variant's next to that variant's input)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler import campaigns
from tests.conftest import make_runtime, stack_env
from worker.access.users import create_user
from worker.console import variant_form
from worker.console.routes_new import _form_field
from worker.errors import FieldProblem, MessageInvalid
from worker.models import Campaign
from worker.runtime import install_runtime

A_FIELDS = {"body_text": "Hello {{name}}, spring sale", "button_title_1": "Reserve", "button_id_1": "reserve"}
B_FIELDS = {"vb_body_text": "{{name}}, 20% off", "vb_header_text": "Sale", "vb_button_title_1": "Reserve",
            "vb_button_id_1": "reserve", "vb_button_title_3": "Later", "vb_button_id_3": "later"}
OPTIONS = {"test_share_percent": "20", "decide_after": "4h", "metric": "replies", "default_variant": "B"}


@pytest.fixture
def rt(empty_database: str) -> Any:
    runtime = make_runtime(stack_env(database_url=empty_database, sandbox_url="http://127.0.0.1:9",
                                     AWAL_PHONE_NUMBER_ID="123456", OPT_OUT_BUTTON_IDS="stop"))
    yield runtime
    runtime.close()


def test_a_form_of_one_message_binds_as_before_and_ignores_test_options() -> None:
    bound = variant_form.bind({"name": "x", **A_FIELDS, **OPTIONS})
    assert bound.letters == "A" and bound.variants is None and bound.options == {}
    assert bound.template == {"body_text": "Hello {{name}}, spring sale",
                              "buttons": [{"id": "reserve", "title": "Reserve"}]}


def test_two_variants_bind_each_through_the_message_form_with_the_test_options() -> None:
    bound = variant_form.bind({**A_FIELDS, **B_FIELDS, **OPTIONS})
    assert bound.letters == "AB" and bound.template is None
    assert bound.variants == [
        {"body_text": "Hello {{name}}, spring sale", "buttons": [{"id": "reserve", "title": "Reserve"}]},
        {"body_text": "{{name}}, 20% off", "header_text": "Sale",
         "buttons": [{"id": "reserve", "title": "Reserve"}, {"id": "later", "title": "Later"}]}]
    assert bound.options == {"test_share": 0.2, "decide_after": "4h", "metric": "replies", "default_variant": "B",
                             "variant_labels": ["Variant A", "Variant B"]}
    assert variant_form.bind({**A_FIELDS, **B_FIELDS, "vc_body_text": "", **OPTIONS}).letters == "ABC"


def test_an_empty_decide_after_is_left_out_so_a_share_of_100_only_reports() -> None:
    bound = variant_form.bind({**A_FIELDS, **B_FIELDS, "test_share_percent": "100", "decide_after": " "})
    assert bound.options["test_share"] == 1.0 and bound.options["decide_after"] is None


@pytest.mark.parametrize("text, share, words", [
    ("20", 0.2, None), ("12.5", 0.125, None), ("100 %", 1.0, None),
    ("lots", "lots", "'lots' is not a number; give a percentage above 0 and at most 100"),
    ("0", 0.0, "0 % is outside 0-100 %"), ("150", 1.5, "150 % is outside 0-100 %"),
])
def test_the_percentage_becomes_a_share_or_is_refused_in_percent(text: str, share: Any, words: str | None) -> None:
    got, problem = variant_form.percent_to_share(text)
    assert got == share
    assert (problem is None) if words is None else problem.startswith(words)


def test_the_add_and_remove_buttons_without_script_change_the_variants_the_form_holds() -> None:
    added = variant_form.resized({**A_FIELDS, "add_variant": "1"})
    assert variant_form.letters_in(added) == "AB" and added["vb_body_text"] == "" and "add_variant" not in added
    assert variant_form.letters_in(variant_form.resized({**A_FIELDS, **B_FIELDS, "add_variant": "1"})) == "ABC"
    removed = variant_form.resized({**A_FIELDS, **B_FIELDS, "remove_variant": "B"})
    assert variant_form.letters_in(removed) == "A" and not any(k.startswith("vb_") for k in removed)


@pytest.mark.parametrize("field, problem, expected_input, words", [
    ("Variant B: body_text", "is required", "vb_body_text", "is required"),
    ("Variant A: body_text", "is required", "body_text", "is required"),
    # B's second button is the form's row 3 (row 2 was left empty)
    ("Variant B: buttons[1].title", "repeats an earlier button's title", "vb_button_title_3",
     "repeats an earlier button's title"),
    # past B's own rows: the opt-out button every variant gets
    ("Variant B: buttons[2].id", "is not an opt-out id", "opt_out_button", "is not an opt-out id"),
    ("Variant B: buttons", "has 4 buttons", None, "Variant B: buttons: has 4 buttons"),
    ("test_share", "1.5 is outside (0, 1]", "test_share_percent", "150 % is outside 0-100 %; e.g. 20 tests"),
    ("decide_after", "is required with a test share below 1", "decide_after", "is required with a test share below 1"),
    ("metric", "'x' is not a metric", "metric", "'x' is not a metric"),
    ("default_variant", "'C' is not one of the variants (A, B)", "default_variant", "'C' is not one of"),
    ("variants", "has 4 message(s)", None, "variants: has 4 message(s)"),
    ("expires_at", "has no UTC offset", "expires_at", "has no UTC offset"),
])
def test_each_service_problem_goes_next_to_its_input(field: str, problem: str, expected_input: str | None,
                                                     words: str) -> None:
    form = {**A_FIELDS, **B_FIELDS, **OPTIONS, "test_share_percent": "150"}
    bound = variant_form.bind(form)
    got_input, got_words = variant_form.input_for(FieldProblem(field, problem), form, bound, _form_field)
    assert got_input == expected_input
    assert got_words.startswith(words)


@pytest.mark.parametrize("name, variants, words", [
    ("vb_button_title_2", True, "Variant B: button 2 title"), ("vc_body_text", True, "Variant C: body"),
    ("body_text", True, "Variant A: body"), ("button_id_1", True, "Variant A: button 1 id"),
    ("body_text", False, "Body"),
    ("test_share_percent", True, "Test group %"), ("expires_at", True, "Expires at"),
])
def test_the_list_atop_the_form_names_each_input_in_words(name: str, variants: bool, words: str) -> None:
    assert variant_form.input_words(name, variants) == words


def test_the_service_refuses_a_blank_variant_b_and_the_problem_lands_on_its_body(rt: Any, tmp_path: Path) -> None:
    """Given a form whose variant B body is only spaces (the browser lets it through): the real
    create_from_options refuses it, names it "Variant B: body_text", and nothing is created."""
    path = tmp_path / "r.csv"
    path.write_text("phone,name\n966500000001,Ann\n966500000002,Bob\n", encoding="utf-8")
    form = {**A_FIELDS, **B_FIELDS, **OPTIONS, "vb_body_text": "   "}
    bound = variant_form.bind(form)
    with pytest.raises(MessageInvalid) as caught:
        campaigns.create_from_options(rt, path, name="ab", template=bound.template, variants=bound.variants,
                                      **bound.options, draft=True)
    placed = [variant_form.input_for(p, form, bound, _form_field) for p in caught.value.problems]
    assert placed == [("vb_body_text", "is empty or whitespace only; it is required")]
    with rt.session_factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 0
    form["vb_body_text"] = "{{name}}, 20% off"
    bound = variant_form.bind(form)
    campaign, _ = campaigns.create_from_options(rt, path, name="ab", template=bound.template, variants=bound.variants,
                                                **bound.options, draft=True)
    assert [v["body_text"] for v in campaign.variants] == ["Hello {{name}}, spring sale", "{{name}}, 20% off"]


def _shown(page: str, section_id: str) -> bool:
    tag = re.search(rf'<div class="columns variant"[^>]*id="{section_id}"[^>]*>', page).group(0)
    return " hidden" not in tag


def test_without_the_pages_script_the_add_and_remove_buttons_post_and_the_server_shows_one_more_or_fewer(
        sqlite_url: str) -> None:
    """Given a browser without script: "Add a variant" posts the form; the page comes back with the
    typed values kept, variant B shown with the test's options, and nothing created; "Remove
    variant B" posts again and B is gone."""
    from fastapi.testclient import TestClient

    rt = make_runtime(stack_env(database_url=sqlite_url, sandbox_url="http://127.0.0.1:9"))
    install_runtime(rt)
    try:
        from worker.asgi import create_app

        create_user(rt, email="ana@example.com", role="marketer", password="variant form password", actor="test")
        with TestClient(create_app()) as client:
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
            client.post("/login", data={"email": "ana@example.com", "password": "variant form password",
                                        "csrf_token": token, "next": "/"}, follow_redirects=False)
            page = client.get("/campaigns/new").text
            assert _shown(page, "variant-a") and not _shown(page, "variant-b") and not _shown(page, "variant-c")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
            added = client.post("/campaigns/new", data={"csrf_token": token, "name": "No script", **A_FIELDS,
                                                        "add_variant": "1"},
                                files={"recipients": ("ab.csv", b"phone,name\n966500000001,Ann\n", "text/csv")})
            assert added.status_code == 200
            assert _shown(added.text, "variant-b") and not _shown(added.text, "variant-c")
            assert 'value="Reserve"' in added.text and "ab.csv</strong> (1 row) is kept" in added.text   # not chosen again
            assert '<fieldset id="ab-options" >' in added.text   # shown and enabled
            removed = client.post("/campaigns/new", data={"csrf_token": token, "name": "No script", **A_FIELDS,
                                                          **B_FIELDS, **OPTIONS, "remove_variant": "B"})
            assert not _shown(removed.text, "variant-b") and 'value="{{name}}, 20% off"' not in removed.text
        with rt.session_factory() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Campaign)) == 0
    finally:
        install_runtime(None)
        rt.close()
