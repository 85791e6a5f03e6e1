"""CDS Hooks 2.0 as a real EHR calls it (issue 16): the specification's own example requests,
drugs given only by code, contained and referenced Medications, prefetch read from a FHIR
server on loopback (or 412), selections, summaries and labels, feedback, patient data that
cannot be true."""

from __future__ import annotations

import copy
import json
import logging
import uuid
from datetime import date, timedelta

import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from serving.cdss import cdshooks
from serving.cdss.app import create_app
from serving.cdss.coding import ATC_SYSTEM, MA_THUOC_SYSTEM, RXNORM_SYSTEM, Code, DrugCoder
from tests.support.cdss_support import FIXTURES, real_kb, settings_for
from tests.support.fhir_server import JsonEndpoint, searchset

SPEC = FIXTURES / "spec"
SCHEMA = json.loads((FIXTURES / "cds-hooks-2.0.schema.json").read_text(encoding="utf-8"))
SELECT = "/cds-services/haidang-prescription-select"
SIGN = "/cds-services/haidang-prescription-sign"
TOKEN = "opaque-fhir-token-" + uuid.uuid4().hex
PATIENT = json.loads((SPEC / "patient-1288992.json").read_text(encoding="utf-8"))
EMPTY = {"patient": None, "conditions": None, "medications": None}


def validate(body: dict) -> None:
    schema = {**SCHEMA, "$ref": "#/$defs/response"}
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


def spec_request(name: str, **envelope) -> dict:
    body = json.loads((SPEC / name).read_text(encoding="utf-8"))
    hook = "order-select" if name.startswith("order-select") else "order-sign"
    return {"hook": hook, "hookInstance": str(uuid.uuid4()), **body, **envelope}


def request(drafts: list[dict], prefetch: dict | None = None, **context) -> dict:
    return {"hook": "order-sign", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": "p1",
                        "draftOrders": {"resourceType": "Bundle",
                                        "entry": [{"resource": r} for r in drafts]},
                        **context},
            "prefetch": EMPTY if prefetch is None else prefetch}


def order(ident: str, concept: dict | None = None, **fields) -> dict:
    mr = {"resourceType": "MedicationRequest", "id": ident, "status": "draft",
          "intent": "order", "subject": {"reference": "Patient/p1"}, **fields}
    if concept is not None:
        mr["medicationCodeableConcept"] = concept
    return mr


def coded(system: str, code: str, display: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


class TinyCatalog:
    """The hospital's MA_THUOC catalogue at its unit boundary (serving.cdss.catalog's two
    look-ups): two made-up hospital codes and one made-up brand."""

    def ingredients_of(self, ma_thuoc: str):
        return {"BV-0001": ("amiodarone",), "BV-0002": ("moxifloxacin",)}.get(ma_thuoc)

    def ingredients_of_brand(self, name: str):
        return ("clarithromycin",) if name.lower() == "biệt dược thử" else None


@pytest.fixture
def client(tmp_path):
    app = create_app(settings_for(tmp_path, development=True), kb=real_kb())
    with TestClient(app) as c:
        yield c


def critical_about(body: dict, a: str, b: str) -> list[dict]:
    return [c for c in body["cards"] if c["indicator"] == "critical"
            and a in c["detail"].lower() and b in c["detail"].lower()]


def fhir_routes(patient=PATIENT, conditions=(), medications=()) -> dict:
    pid = patient["id"]
    return {f"Patient/{pid}": patient,
            f"Condition?patient={pid}": searchset(*conditions),
            f"MedicationRequest?patient={pid}&status=active": searchset(*medications)}


# ---------------------------------------------------------------------- the spec's examples
@pytest.mark.parametrize("name", ["order-select-r4.json", "order-select-stu3.json",
                                  "order-sign-r4.json", "order-sign-stu3.json"])
def test_spec_examples_with_a_fhir_server(client, name, caplog):
    """The specification's example requests, their prefetch read from a FHIR server that
    checks the bearer token: 200, the drug recognised (no unrecognised card), the malformed
    R4 dosage (doseAndRate as an object, doseQuantity on the dosage) named as ignored.
    Neither the token nor the patient id reaches the logs."""
    caplog.set_level(logging.DEBUG)
    with JsonEndpoint(fhir_routes(), token=TOKEN) as fhir:
        req = spec_request(name, fhirServer=fhir.base, fhirAuthorization={
            "access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
            "scope": "patient/Patient.read", "subject": "haidang"})
        r = client.post(SELECT if "select" in name else SIGN, json=req)
        assert r.status_code == 200, r.text
        body = r.json()
        validate(body)
        asked = sorted(x["path"] for x in fhir.requests)
    assert asked == ["/fhir/Condition?patient=1288992",
                     "/fhir/MedicationRequest?patient=1288992&status=active",
                     "/fhir/Patient/1288992"]
    topics = [c["source"]["topic"]["code"] for c in body["cards"]]
    assert "unrecognised-drug" not in topics
    [ignored] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "input-ignored"]
    assert ".dosageInstruction[0].dose" in ignored["detail"]
    assert topics == ["input-ignored"]  # amoxicillin/clavulanate alone: nothing else to say
    assert "HTTP Request" in caplog.text  # httpx did log the reads...
    assert TOKEN not in caplog.text and "1288992" not in caplog.text  # ...without them


@pytest.mark.parametrize("name", ["order-select-r4.json", "order-sign-r4.json"])
def test_spec_examples_with_prefetch(client, name):
    req = spec_request(name, prefetch={"patient": PATIENT, "conditions": None,
                                       "medications": None})
    r = client.post(SELECT if "select" in name else SIGN, json=req)
    assert r.status_code == 200, r.text
    validate(r.json())
    assert "unrecognised-drug" not in {c["source"]["topic"]["code"] for c in r.json()["cards"]}


@pytest.mark.parametrize("name", ["order-select-dstu2.json", "order-sign-dstu2.json"])
def test_spec_dstu2_examples_are_answered_with_a_warning(client, name):
    """A DSTU2 MedicationOrder is not read as R4, and the answer says so: never silent."""
    r = client.post(SELECT if "select" in name else SIGN, json=spec_request(
        name, prefetch={"patient": PATIENT, "conditions": None, "medications": None}))
    assert r.status_code == 200, r.text
    [card] = [c for c in r.json()["cards"] if "MedicationOrder" in c["summary"]]
    assert card["indicator"] == "warning"
    assert card["source"]["topic"]["code"] == "input-not-checked"


# ---------------------------------------------------------------------- prefetch and FHIR
def test_no_prefetch_and_no_fhir_server_is_412(client):
    req = spec_request("order-sign-r4.json")
    r = client.post(SIGN, json=req)
    assert r.status_code == 412
    assert "conditions" in r.json()["error"] and "fhirServer" in r.json()["error"]


def test_operation_outcome_in_prefetch_is_read_from_the_fhir_server(client):
    """Issue 16: an OperationOutcome where a prefetch key should be is not a 422: it counts
    as missing, and the conditions come from the FHIR server (here: a contraindication)."""
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "error", "code": "timeout"}]}
    pregnant = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10",
                                     "code": "O26.8"}]}}
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female",
               "birthDate": "1990-01-01"}
    with JsonEndpoint(fhir_routes(patient, conditions=[pregnant]), token=TOKEN) as fhir:
        req = request([order("d1", {"text": "Warfarin 5mg"})],
                      prefetch={"patient": patient, "conditions": outcome, "medications": None})
        req["fhirServer"] = fhir.base
        req["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer",
                                    "expires_in": 60, "scope": "x", "subject": "y"}
        r = client.post(SIGN, json=req)
        assert [x["path"] for x in fhir.requests] == ["/fhir/Condition?patient=p1"]
    assert r.status_code == 200, r.text
    assert any("warfarin" in c["detail"].lower() and c["source"]["topic"]["code"] == "pregnancy"
               for c in r.json()["cards"])
    without = request([order("d1", {"text": "Warfarin 5mg"})],
                      prefetch={"patient": patient, "conditions": outcome, "medications": None})
    r = client.post(SIGN, json=without)
    assert r.status_code == 412 and "OperationOutcome" in r.json()["error"]


def test_fhir_server_refusing_the_token_or_expired_token_is_412(client, caplog):
    caplog.set_level(logging.DEBUG)
    with JsonEndpoint(fhir_routes(), token=TOKEN) as fhir:
        for auth in ({"access_token": "wrong", "token_type": "Bearer", "expires_in": 60,
                      "scope": "x", "subject": "y"},
                     {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 0,
                      "scope": "x", "subject": "y"}):
            req = spec_request("order-sign-r4.json", fhirServer=fhir.base,
                               fhirAuthorization=auth)
            r = client.post(SIGN, json=req)
            assert r.status_code == 412, r.text
            assert TOKEN not in r.text and "wrong" not in r.text
        assert [x["authorization"] for x in fhir.requests] == ["Bearer wrong"] * 3
    assert TOKEN not in caplog.text  # never logged


def test_slow_fhir_server_times_out_within_the_budget(tmp_path):
    settings = settings_for(tmp_path, development=True)
    settings.cds_hooks.fhir_timeout_s = 0.3
    with JsonEndpoint(fhir_routes(), delay_s=3.0) as fhir, \
            TestClient(create_app(settings, kb=real_kb())) as c:
        r = c.post(SIGN, json=spec_request("order-sign-r4.json", fhirServer=fhir.base))
    assert r.status_code == 412 and "too slow" in r.json()["error"]


def test_fhir_server_not_in_the_allowlist_is_not_read(tmp_path):
    settings = settings_for(tmp_path, development=True)
    settings.cds_hooks.fhir_servers = ["https://fhir.benhvien.example/r4"]
    with JsonEndpoint(fhir_routes()) as fhir, \
            TestClient(create_app(settings, kb=real_kb())) as c:
        r = c.post(SIGN, json=spec_request("order-sign-r4.json", fhirServer=fhir.base))
        assert r.status_code == 412 and "cds_hooks.fhir_servers" in r.json()["error"]
        assert fhir.requests == []


# ---------------------------------------------------------------------- drugs by code
@pytest.mark.parametrize(("concept", "system"), [
    (coded(ATC_SYSTEM, "C01BD01"), "atc"),
    (coded(RXNORM_SYSTEM, "703"), "rxnorm"),
    (coded(MA_THUOC_SYSTEM, "BV-0001"), "ma-thuoc"),
    (coded("http://example.org/local-codes", "X1", "Amiodarone 200 mg"), "display"),
    ({"text": "Amiodaron 200mg"}, "text"),
])
def test_coded_only_drugs_are_checked(tmp_path, concept, system):
    """Issue 16: amiodarone given only by its code in each supported system (or only by its
    display / text) meets moxifloxacin (by RxNorm): the contraindicated card."""
    app = create_app(settings_for(tmp_path, development=True), kb=real_kb())
    app.state.cdss.hooks.coder.catalog = TinyCatalog()
    req = request([order("d1", concept), order("d2", coded(RXNORM_SYSTEM, "139462"))])
    with TestClient(app) as c:
        body = c.post(SIGN, json=req).json()
    validate(body)
    assert critical_about(body, "amiodaron", "moxifloxacin"), (system, body)
    assert "unrecognised-drug" not in {c["source"]["topic"]["code"] for c in body["cards"]}


def test_unresolvable_code_is_a_warning_naming_code_and_system(client):
    req = request([order("d1", coded(RXNORM_SYSTEM, "999999999")),
                   order("d2", coded(ATC_SYSTEM, "J01MA14"))])
    body = client.post(SIGN, json=req).json()
    validate(body)
    [card] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "unrecognised-drug"]
    assert card["indicator"] == "warning"
    assert "999999999" in card["summary"] and RXNORM_SYSTEM in card["summary"]
    assert "CHƯA" in card["summary"]


def test_unknown_ma_thuoc_without_catalogue_is_a_warning(client):
    body = client.post(SIGN, json=request([order("d1", coded(MA_THUOC_SYSTEM, "40.17"))])).json()
    [card] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "unrecognised-drug"]
    assert card["indicator"] == "warning" and "40.17" in card["summary"]


def test_contained_medication_with_ingredients(client):
    """Issue 16: a MedicationRequest pointing to a contained Medication (no text anywhere):
    its code is unknown, its ingredient list (ATC) identifies it."""
    med = {"resourceType": "Medication", "id": "m1",
           "code": coded("http://example.org/formulary", "F-77"),
           "ingredient": [{"itemCodeableConcept": coded(ATC_SYSTEM, "C01BD01")}]}
    req = request([order("d1", medicationReference={"reference": "#m1"}, contained=[med]),
                   order("d2", coded(ATC_SYSTEM, "J01MA14"))])
    body = client.post(SIGN, json=req).json()
    validate(body)
    assert critical_about(body, "amiodaron", "moxifloxacin")


def test_referenced_medication_from_prefetch_and_from_the_fhir_server(client):
    med = {"resourceType": "Medication", "id": "m9", "code": coded(RXNORM_SYSTEM, "703")}
    drafts = [order("d1", medicationReference={"reference": "Medication/m9"}),
              order("d2", coded(ATC_SYSTEM, "J01MA14"))]
    in_bundle = request(drafts)
    in_bundle["context"]["draftOrders"]["entry"].append({"resource": med})
    assert critical_about(client.post(SIGN, json=in_bundle).json(), "amiodaron", "moxifloxacin")
    with JsonEndpoint({"Medication/m9": med}, token=TOKEN) as fhir:
        fetched = request(drafts)
        fetched["fhirServer"] = fhir.base
        fetched["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer",
                                        "expires_in": 30, "scope": "x", "subject": "y"}
        body = client.post(SIGN, json=fetched).json()
        assert [x["path"] for x in fhir.requests] == ["/fhir/Medication/m9"]
    assert critical_about(body, "amiodaron", "moxifloxacin")


def test_unreadable_medication_reference_is_a_warning(client):
    req = request([order("d1", medicationReference={"reference": "#nowhere"})])
    body = client.post(SIGN, json=req).json()
    assert [c["indicator"] for c in body["cards"]
            if c["source"]["topic"]["code"] == "unrecognised-drug"] == ["warning"]


def test_coder_units():
    coder = DrugCoder(real_kb(), TinyCatalog())
    assert coder.by_code(Code(ATC_SYSTEM, "c01bd01")) == ("amiodarone",)
    assert coder.by_code(Code(RXNORM_SYSTEM, "161")) == ("paracetamol",)
    assert coder.by_code(Code(RXNORM_SYSTEM, "617993")) == ()  # a clinical drug: not mapped
    assert coder.by_code(Code("urn:other", "C01BD01")) == ()
    assert coder.by_code(Code(ATC_SYSTEM, "J01MA")) == ()  # a group names no drug
    assert coder.by_name("Biệt dược thử") == ("clarithromycin",)
    found = coder.identify([Code(RXNORM_SYSTEM, "617993", "Amoxicillin 120 MG/ML / "
                                 "clavulanate potassium 8.58 MG/ML Oral Suspension")], [None])
    assert found.ingredients == ("amoxicillin", "clavulanic acid") and found.via == "text"
    none = coder.identify([Code(RXNORM_SYSTEM, "1"), Code(ATC_SYSTEM, "Z99")], ["???"])
    assert none.ingredients == () and [c.code for c in none.codes] == ["1", "Z99"]


def test_every_rxnorm_row_names_a_known_ingredient():
    import csv

    from serving.cdss.coding import RXNORM_MAP
    rows = list(csv.DictReader(RXNORM_MAP.open(encoding="utf-8")))
    drugs = real_kb().drugs
    assert rows and all(r["inn"] in drugs and r["rxcui"].isdigit() for r in rows)
    # every code we ship names the public source that gives it as this ingredient
    assert all(r["evidence"].strip() for r in rows)
    assert len({r["rxcui"] for r in rows}) == len(rows)


# ---------------------------------------------------------------------- selections
def test_selections_limit_order_select_cards(client):
    """Cards about the selected order and its interactions with the others; not the pair of
    two unselected orders."""
    drafts = [order("a", {"text": "Amiodaron 200mg"}), order("b", {"text": "Moxifloxacin 400mg"}),
              order("c", {"text": "Simvastatin 20mg"}), order("d", {"text": "Clarithromycin"})]
    req = request(drafts, selections=["MedicationRequest/d"])
    req["hook"] = "order-select"
    body = client.post(SELECT, json=req).json()
    validate(body)
    assert critical_about(body, "clarithromycin", "simvastatin")
    assert not critical_about(body, "amiodaron", "moxifloxacin")
    req["context"]["selections"] = ["MedicationRequest/a"]
    req["hookInstance"] = str(uuid.uuid4())
    body = client.post(SELECT, json=req).json()
    assert critical_about(body, "amiodaron", "moxifloxacin")
    assert not critical_about(body, "clarithromycin", "simvastatin")


# ---------------------------------------------------------------------- card details
def test_summary_under_140_cut_at_a_word_and_short_label():
    long = "Chống chỉ định phối hợp: " + " ".join(["hoạt-chất-dài"] * 30)
    text = cdshooks._short(long, cdshooks.SUMMARY_MAX)
    assert len(text) < 140 and text.endswith("…")
    assert long.startswith(text[:-1]) and long[len(text) - 1] == " "  # a whole word
    exact = "x" * 140
    assert len(cdshooks._short(exact, cdshooks.SUMMARY_MAX)) < 140
    label = cdshooks._label("QĐ 5948/QĐ-BYT (30/12/2021), STT 51 (CredibleMeds; labels)")
    assert label == "Hải Đăng CDSS · QĐ 5948/QĐ-BYT"


def test_every_critical_card_has_override_reasons_and_the_citation_in_detail(client):
    drafts = [order("a", {"text": "Amiodaron 200mg"}), order("b", {"text": "Moxifloxacin 400mg"}),
              order("c", {"text": "Simvastatin 20mg"}), order("d", {"text": "Clarithromycin"})]
    body = client.post(SIGN, json=request(drafts)).json()
    critical = [c for c in body["cards"] if c["indicator"] == "critical"]
    assert len(critical) >= 2
    for card in critical:
        assert card["overrideReasons"] and len(card["summary"]) < 140
        assert len(card["source"]["label"]) <= cdshooks.LABEL_MAX
        assert "STT" in card["detail"] or "Nguồn" in card["detail"]
    assert all("overrideReasons" not in c for c in body["cards"] if c["indicator"] != "critical")


def test_discovery_prefetch_templates_use_only_what_an_ehr_fills(client):
    """Templates: context tokens of the hook, and R4 read/search with reference and token
    parameters only (the specification's prefetch query restrictions)."""
    import re

    for service in client.get("/cds-services").json()["services"]:
        for template in service["prefetch"].values():
            tokens = re.findall(r"{{(.*?)}}", template)
            assert tokens and set(tokens) <= {"context.patientId", "context.encounterId",
                                              "context.userId"}
            resource, _, query = template.partition("?")
            assert resource.split("/")[0] in ("Patient", "Condition", "MedicationRequest")
            params = [p.split("=")[0] for p in query.split("&") if p]
            assert set(params) <= {"patient", "status", "_count"}


@pytest.mark.parametrize(("item", "status"), [
    ({"outcome": "overridden", "overrideReason": {
        "reason": {"system": cdshooks.OVERRIDE_SYSTEM, "code": "will-adjust"},
        "userComment": "ok"}, "outcomeTimestamp": "2026-12-06T10:00:00Z"}, 200),
    ({"outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}],
      "outcomeTimestamp": "2026-12-06T10:00:00+07:00"}, 200),
    ({"outcome": "overridden"}, 200),
    ({"outcome": "accepted", "overrideReason": {"reason": {"code": "x"}}}, 422),
    ({"outcome": "overridden", "acceptedSuggestions": [{"id": "s1"}]}, 422),
    ({"outcome": "overridden", "overrideReason": {"reason": "not a coding"}}, 422),
    ({"outcome": "dismissed"}, 422),
    ({"outcome": "accepted", "outcomeTimestamp": "yesterday"}, 422),
])
def test_feedback_outcomes_per_spec(client, item, status):
    r = client.post(SELECT + "/feedback", json={"feedback": [{"card": str(uuid.uuid4()), **item}]})
    assert r.status_code == status, r.text


# ---------------------------------------------------------------------- impossible patients
@pytest.mark.parametrize(("birth", "authored", "needle"), [
    ((date.today() + timedelta(days=30)).isoformat(), None, "tương lai"),
    ("2026-06-01", "2026-01-15", "sau ngày kê đơn"),
    ("1880-01-01", None, "trên 130"),
])
def test_impossible_birth_date_is_a_warning_card(client, birth, authored, needle):
    """Issue 17 item 7: a birth date in the future, after the order, or an age over 130."""
    fields = {"authoredOn": authored} if authored else {}
    req = request([order("d1", {"text": "Paracetamol 500mg"}, **fields)],
                  prefetch={"patient": {"resourceType": "Patient", "id": "p1",
                                        "birthDate": birth},
                            "conditions": None, "medications": None})
    body = client.post(SIGN, json=req).json()
    validate(body)
    [card] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "patient-data"]
    assert card["indicator"] == "warning" and needle in card["summary"]


def test_plausible_birth_date_gives_no_patient_card(client):
    req = request([order("d1", {"text": "Paracetamol 500mg"})],
                  prefetch={"patient": copy.deepcopy(PATIENT), "conditions": None,
                            "medications": None})
    body = client.post(SIGN, json=req).json()
    assert not [c for c in body["cards"] if c["source"]["topic"]["code"] == "patient-data"]


def test_no_junk_in_the_new_fields_gives_500(client):
    """Medication references, contained resources, selections, fhirAuthorization and
    prefetch values of any shape: an answer, never a server error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    junk = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
    places = ["medicationReference", "contained", "selections", "fhirAuthorization",
              "conditions", "patient", "medications", "authoredOn", "ingredient"]

    @settings(max_examples=80, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(places), junk)
    def run(where, value):
        med = {"resourceType": "Medication", "id": "m1", "ingredient": [
            {"itemCodeableConcept": coded(ATC_SYSTEM, "C01BD01")}]}
        mr = order("d1", medicationReference={"reference": "#m1"}, contained=[med])
        req = request([mr, order("d2", coded(ATC_SYSTEM, "J01MA14"))], selections=["x"])
        req["hook"] = "order-select"
        if where in ("medicationReference", "contained", "authoredOn"):
            mr[where] = value
        elif where == "ingredient":
            med["ingredient"] = value
        elif where in ("conditions", "patient", "medications"):
            req["prefetch"] = {**EMPTY, where: value}
        elif where == "selections":
            req["context"]["selections"] = value
        else:
            req[where] = value
        r = client.post(SELECT, json=req)
        assert r.status_code in (200, 412, 422), r.text

    run()


def test_unrecognised_card_names_the_text_and_the_code(client):
    concept = {**coded("http://example.org/local", "L-42"), "text": "Cao dược liệu XYZ"}
    body = client.post(SIGN, json=request([order("d1", concept)]),
                       headers={"Accept-Language": "en"}).json()
    [card] = [c for c in body["cards"] if c["source"]["topic"]["code"] == "unrecognised-drug"]
    assert card["summary"] == ("Drug not recognised, NOT checked: “Cao dược liệu XYZ” – "
                               "L-42 (http://example.org/local)")
    assert "NOT checked" in card["detail"] and card["indicator"] == "warning"
