"""Compile the national-scale drug dictionary from the shipped sources, reproducibly.

    PYTHONPATH=. python datasets/knowledge/build.py                 # from the shipped files
    PYTHONPATH=. python datasets/knowledge/build.py --who-atc FILE  # also re-select ATC codes

Inputs (all in `datasets/`, each with its provenance README):
- `knowledge/drugs.csv`: the curated dictionary (QĐ 5948 ingredients and common drugs, doses);
- `atc-ingredients/atc-codes.csv`: WHOCC ATC level-5 codes of the dictionary's ingredients
  (selected from the WHO table by `--who-atc` for the chapters a general hospital prescribes
  from; only these codes are shipped) and `atc-groups.csv`, their level 1-4 group names;
- `knowledge/atc-class-map.csv`: ATC group -> class tags;
- `ddi-ansm/`: the ANSM thesaurus and its substance -> class table.

Outputs (reviewable, one row per fact, `source` and `review` on each):
- `knowledge/dictionary.csv`: every ingredient (curated ones with their added spellings and
  codes, generated ones from ATC and ANSM), Vietnamese spelling by the MoH rules
  (`names.vietnamese_spelling`), international and French spellings, ATC codes, class tags;
- `knowledge/ansm-names.csv`: every ANSM side as written -> ingredient keys (class sides
  expanded through ANSM's own class table).
Nothing here is fetched from the network; the same inputs give the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from pathlib import Path

from serving.cdss import names

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "datasets"
KNOWLEDGE = DATASETS / "knowledge"
ATC_DIR = DATASETS / "atc-ingredients"
ANSM_DIR = DATASETS / "ddi-ansm"
ANSM_THESAURUS = ANSM_DIR / "ansm_thesaurus_ddi_2020_10.csv"
ANSM_CLASSES = ANSM_DIR / "ansm_substance_classes_2020_10.csv"
REVIEW = "pending pharmacist review"
SOURCE_ATC = "Source: WHOCC ATC/DDD Index"
SOURCE_ANSM = "ANSM, Thésaurus des interactions médicamenteuses, 20/10/2020"

# ATC chapters whose substances become ingredients of their own; codes from the others
# (dermatological, sensory organs, various) only join an ingredient already known, except
# these groups, which hospitals prescribe systemically.
NEW_FROM = ("A", "B", "C", "G", "H", "J", "L", "M", "N", "P", "R",
            "D01B", "D05B", "D10B", "V03AB", "V03AC", "V03AE", "V03AF", "V08")
SELECT_FROM = NEW_FROM + ("D", "S", "V")
# ATC level-5 names that are not one substance.
NOT_ONE_SUBSTANCE = re.compile(
    r"combination|various|\bother|preparation|\band\b|,|\bwith\b|organisms|extract|"
    r"\bantigen|vaccine|\bplain\b|derivative|\bincl\b|\bexcl\b|\bagents?\b|allergen",
    re.IGNORECASE,
)
# Words that only name a salt/counter-ion in an ATC or ANSM name: dropped from the key when
# what remains still names a substance.
ION_WORDS = frozenset(
    """
    sodium potassium calcium magnesium hydrochloride chloride hydrobromide bromide
    sulfate sulphate phosphate acetate citrate tartrate maleate mesilate mesylate besilate
    besylate fumarate succinate hemisuccinate lactate gluconate nitrate dihydrochloride
    hyclate monohydrate dihydrate trihydrate hydrate dipropionate propionate valerate
    butyrate furoate pivalate embonate pamoate tosilate tosylate edisilate napadisilate
    axetil pivoxil proxetil disoproxil alafenamide marboxil etabonate
    medoxomil dipivoxil mofetil etexilate tert butylamine erbumine arginine betadex
    """.split()
)
# ANSM spellings that fold onto nothing known but name a dictionary ingredient.
FRENCH_SYNONYMS = {
    "acide acetylsalicylique": "acetylsalicylic acid",
    "alcool boisson ou excipient": "ethanol",
    "adrenaline": "epinephrine",
    "noradrenaline": "norepinephrine",
    "argipressine": "vasopressin",
    "arsenieux": "arsenic trioxide",
    "charbon active": "medicinal charcoal",
    "magnesium": "magnesium sulfate",
    "calcium": "calcium carbonate",
    "sodium chlorure": "sodium chloride",
    "sodium nitroprussiate": "nitroprusside",
    "ursodesoxycholic acid": "ursodeoxycholic acid",
    "folinic acid": "calcium folinate",
    "estrogenes conjugues": "conjugated estrogens",
    "povidone iodee": "povidone-iodine",
    "dinitrate isosorbide": "isosorbide dinitrate",
    "peg interferon alfa 2a": "peginterferon alfa-2a",
    "vitamine a": "retinol",
    "ginkgo": "ginkgo folium",
    "millepertuis": "hyperici herba",
    "theine": "caffeine",
    "fer": "iron",
    "sels de fer par voie injectable": "iron",
    "bleu de methylene": "methylthioninium chloride",
    "potassium": "potassium chloride",
}
NOT_A_DRUG = {"pamplemousse jus et fruit", "preservatifs en latex",
              "medicaments administres par voie orale",
              "medicaments utilises par voie vaginale"}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def _write(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split("|") if v.strip()]


def substance_key(name: str) -> str:
    """ATC/ANSM name -> lowercase INN key: `levothyroxine sodium` -> `levothyroxine`."""
    words = re.sub(r"\(.*?\)", " ", name.lower()).replace("-", " - ").split()
    words = [w for w in words if w != "-"]
    kept = [w for w in words if w not in ION_WORDS]
    return " ".join(kept if kept else words)


def select_atc(who_table: Path) -> None:
    """Write the shipped ATC subset: level-5 rows of single substances in SELECT_FROM."""
    rows = _read(who_table)
    chosen = [r for r in rows if len(r["atc_code"]) == 7 and r["atc_code"].startswith(SELECT_FROM)
              and not NOT_ONE_SUBSTANCE.search(r["atc_name"])]
    groups = {r["atc_code"]: r["atc_name"] for r in rows if len(r["atc_code"]) < 7}
    needed = sorted({c[:n] for r in chosen for c in [r["atc_code"]] for n in (1, 3, 4, 5)})
    _write(ATC_DIR / "atc-codes.csv", ["atc_code", "atc_name", "source"],
           [{"atc_code": r["atc_code"], "atc_name": r["atc_name"], "source": SOURCE_ATC}
            for r in sorted(chosen, key=lambda r: r["atc_code"])])
    _write(ATC_DIR / "atc-groups.csv", ["atc_code", "atc_name", "source"],
           [{"atc_code": c, "atc_name": groups[c], "source": SOURCE_ATC}
            for c in needed if c in groups])


class Dictionary:
    """Ingredients keyed by INN, with a folded-name index to merge spellings onto them."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.by_fold: dict[str, str] = {}

    def add_name(self, key: str, name: str) -> None:
        for folded in {names.fold(name), names.fold(substance_key(name))}:
            if folded and folded not in self.by_fold:
                self.by_fold[folded] = key

    def find(self, name: str) -> str | None:
        for candidate in (name, substance_key(name)):
            hit = self.by_fold.get(names.fold(candidate))
            if hit:
                return hit
        return None

    def new(self, key: str, **fields) -> dict:
        row = {"inn": key, "name_vi": names.vietnamese_spelling(key), "name_en": key,
               "name_fr": "", "atc_codes": [], "classes": set(), "aliases": [],
               "source": [], "review": REVIEW, **fields}
        self.rows[key] = row
        self.add_name(key, key)
        self.add_name(key, row["name_vi"])
        return row


def build(folder: Path = KNOWLEDGE) -> dict[str, int]:
    """Compile into `folder` (the knowledge folder itself by default)."""
    book = Dictionary()
    for row in _read(KNOWLEDGE / "drugs.csv"):
        entry = book.new(row["inn"], name_vi=row["name_vi"],
                         atc_codes=_split(row["atc_codes"]),
                         classes=set(_split(row["classes"])),
                         aliases=_split(row["aliases"]),
                         source=["curated: drugs.csv (" + row["source"] + ")"])
        for alias in entry["aliases"]:
            book.add_name(row["inn"], alias)
    curated = set(book.rows)

    atc_rows = _read(ATC_DIR / "atc-codes.csv")
    _join_atc(book, curated, atc_rows, create=True)
    # ANSM: French spellings join their ingredient; substances ANSM names that neither the
    # curated dictionary nor ATC knows become ingredients of their own.
    ansm_subst: dict[str, list[str]] = {}  # plain French name -> ANSM class names
    for row in _read(ANSM_CLASSES):
        ansm_subst[names.plain(row["substance"])] = [
            names.plain(c) for c in row["drug_classes"].split("|") if c.strip()]
    ansm_classes = {c for cs in ansm_subst.values() for c in cs}
    thesaurus = _read(ANSM_THESAURUS)
    sides = sorted({names.plain(r[k]) for r in thesaurus for k in ("main_drug", "plus_drug")})
    ansm_key: dict[str, str] = {}
    french_names = sorted(set(ansm_subst) | {s for s in sides if s not in ansm_classes})
    written = {names.plain(r[k]): r[k] for r in thesaurus for k in ("main_drug", "plus_drug")}
    written.update({names.plain(r["substance"]): r["substance"] for r in _read(ANSM_CLASSES)})
    for plain_name in french_names:
        if plain_name in NOT_A_DRUG:
            continue
        target = FRENCH_SYNONYMS.get(plain_name)
        key = book.find(target) if target else (
            book.find(plain_name) or book.find(_french_to_english(plain_name)))
        if key is None and target:
            key = target
            if key not in book.rows:
                book.new(key, source=[f"{SOURCE_ANSM} (substance {written[plain_name]!r})"])
        if key is None:
            key = _french_to_english(plain_name)
            book.new(key, name_fr=written[plain_name].lower(),
                     source=[f"{SOURCE_ANSM} (substance {written[plain_name]!r}); "
                             "international spelling derived from the French"])
        entry = book.rows[key]
        french = written[plain_name].lower()
        if not entry["name_fr"]:
            entry["name_fr"] = french
        if french != entry["name_fr"] and french not in entry["aliases"]:
            entry["aliases"].append(french)
        book.add_name(key, french)
        ansm_key[plain_name] = key
        if SOURCE_ANSM not in " ".join(entry["source"]):
            entry["source"].append(f"French name: {SOURCE_ANSM}")

    _join_atc(book, curated, atc_rows, create=False)  # codes of ANSM-only substances
    # Class tags from ATC groups, and the pharmacology memberships (FDA CYP/P-gp table,
    # hyperkalaemia, serotonergic), added to the curated tags.
    class_map = [(r["atc_prefix"], _split(r["tags"]))
                 for r in _read(KNOWLEDGE / "atc-class-map.csv")]
    for entry in book.rows.values():
        for code in entry["atc_codes"]:
            for prefix, tags in class_map:
                if code.startswith(prefix):
                    entry["classes"].update(tags)

    for row in _read(KNOWLEDGE / "class-members.csv"):
        for member in _split(row["members"]):
            key = book.find(member)
            if key is None:
                raise SystemExit(f"class-members.csv: {row['tag']}: {member!r} is no "
                                 "ingredient of the dictionary; fix the name.")
            book.rows[key]["classes"].add(row["tag"])

    for row in _read(KNOWLEDGE / "aliases.csv"):
        key = book.find(row["inn"])
        if key is None:
            raise SystemExit(f"aliases.csv: {row['inn']!r} is no ingredient of the dictionary.")
        book.rows[key]["aliases"].append(row["alias"])
        book.add_name(key, row["alias"])

    # QT: the ANSM torsadogenic classes replace the earlier list (issue 14: not CredibleMeds).
    torsadogenic = {c for c in ansm_classes if "torsade" in c or c.startswith("torsadogenes")}
    for plain_name, classes in ansm_subst.items():
        if plain_name in ansm_key and torsadogenic & set(classes):
            book.rows[ansm_key[plain_name]]["classes"].add("qt-prolonging")

    # ANSM sides -> ingredient keys (classes through ANSM's own table).
    members: dict[str, set[str]] = defaultdict(set)
    for plain_name, classes in ansm_subst.items():
        for cls in classes:
            if plain_name in ansm_key:
                members[cls].add(ansm_key[plain_name])
    side_rows = []
    for side in sides:
        if side in ansm_classes:
            keys, kind = sorted(members[side]), "class"
        elif side in ansm_key:
            keys, kind = [ansm_key[side]], "substance"
        else:
            keys, kind = [], "not a drug"
        side_rows.append({"name_as_written": written[side], "kind": kind,
                          "ingredients": "|".join(keys),
                          "source": f"{SOURCE_ANSM}; class members from its substance index",
                          "review": REVIEW})
    _write(folder / "ansm-names.csv",
           ["name_as_written", "kind", "ingredients", "source", "review"], side_rows)

    # A spelling may name one ingredient only (the loader refuses the data otherwise):
    # canonical names first, curated rows before generated ones; a later clash is dropped.
    owner: dict[str, str] = {}
    order = sorted(book.rows, key=lambda k: (k not in curated, k))
    clashes = []
    for key in order:
        entry = book.rows[key]
        for name in (key, entry["name_vi"]):
            if any(owner.get(f, key) != key for f in _folds(name)):
                clashes.append(f"{name!r} ({key}) vs {owner[next(iter(_folds(name)))]}")
            for folded in _folds(name):
                owner.setdefault(folded, key)
    if clashes:
        raise SystemExit("two ingredients share a spelling; add a FRENCH_SYNONYMS entry or "
                         "fix the source name:\n" + "\n".join(clashes))
    out, dropped = [], 0
    for key in sorted(book.rows):
        entry = book.rows[key]
        vi = entry["name_vi"]
        aliases = []
        for alias in [*entry["aliases"], entry["name_fr"], names.vietnamese_spelling(key)]:
            if not alias or alias in (key, vi) or alias in aliases:
                continue
            if any(owner.setdefault(f, key) != key for f in _folds(alias)):
                dropped += 1
                continue
            aliases.append(alias)
        if entry["name_fr"] and entry["name_fr"] not in aliases:
            entry["name_fr"] = ""
        aliases = [a for a in aliases if a != entry["name_fr"]]
        out.append({"inn": key, "name_vi": vi, "name_en": entry["name_en"],
                    "name_fr": entry["name_fr"], "atc_codes": "|".join(entry["atc_codes"]),
                    "classes": "|".join(sorted(entry["classes"])), "aliases": "|".join(aliases),
                    "source": "; ".join(entry["source"]) +
                    ("; ATC: " + SOURCE_ATC if entry["atc_codes"] else ""),
                    "review": REVIEW})
    _write(folder / "dictionary.csv",
           ["inn", "name_vi", "name_en", "name_fr", "atc_codes", "classes", "aliases",
            "source", "review"], out)
    derived = _pharmacology(book, folder)
    return {"ingredients": len(out), "curated": len(curated), "ansm_sides": len(side_rows),
            "pharmacology_rows_derived": derived,
            "clashing_spellings_dropped": dropped,
            "ansm_unmapped": sum(1 for r in side_rows if not r["ingredients"])}


FRENCH_SALT_WORDS = frozenset("sodique calcique potassique magnesique trometamol de d".split())


# Class tag -> pharmacological property of `pharmacology.csv` (the learned model's
# features), so a property the dictionary's tags state is never missing there.
TAG_PROPERTIES = {
    "qt-prolonging": "qt", "serotonergic": "serotonergic", "maoi": "maoi",
    "strong-cyp3a4-inhibitor": "cyp3a4_inhibitor", "moderate-cyp3a4-inhibitor": "cyp3a4_inhibitor",
    "strong-cyp3a4-inducer": "cyp3a4_inducer", "cyp3a4-sensitive-substrate": "cyp3a4_substrate",
    "cyp3a4-moderate-substrate": "cyp3a4_substrate", "strong-cyp2d6-inhibitor": "cyp2d6_inhibitor",
    "cyp2d6-sensitive-substrate": "cyp2d6_substrate", "strong-cyp2c19-inhibitor":
    "cyp2c19_inhibitor", "cyp2c19-sensitive-substrate": "cyp2c19_substrate",
    "strong-cyp1a2-inhibitor": "cyp1a2_inhibitor", "cyp1a2-sensitive-substrate":
    "cyp1a2_substrate", "moderate-cyp2c9-inhibitor": "cyp2c9_inhibitor",
    "cyp2c9-sensitive-substrate": "cyp2c9_substrate", "pgp-inhibitor": "pgp_inhibitor",
    "pgp-substrate": "pgp_substrate",
}


def _pharmacology(book: Dictionary, folder: Path) -> int:
    """Add to `pharmacology.csv` the properties the class tags state (qt from the ANSM
    torsadogenic classes, CYP/P-gp from the FDA table): curated rows keep theirs."""
    with (KNOWLEDGE / "pharmacology.csv").open(encoding="utf-8", newline="") as handle:
        rows = {r["inn"]: r for r in csv.DictReader(handle)}
    changed = 0
    for key in sorted(book.rows):
        tags = sorted(t for t in book.rows[key]["classes"] if t in TAG_PROPERTIES)
        wanted = {TAG_PROPERTIES[t] for t in tags}
        row = rows.get(key)
        have = set(_split(row["properties"])) if row else set()
        if wanted <= have:
            continue
        note = f"derived from class tags in dictionary.csv ({', '.join(tags)})"
        if row is None:
            row = rows[key] = {"inn": key, "properties": "", "source": note,
                               "review": "pharmacist"}
        elif note not in row["source"]:
            row["source"] = f"{row['source']}; {note}"
        row["properties"] = "|".join(sorted(have | wanted))
        changed += 1
    with (folder / "pharmacology.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["inn", "properties", "source", "review"],
                                lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows.values())  # curated rows in their order, new ones after
    return changed


def _folds(name: str) -> set[str]:
    """The keys the knowledge base indexes a name under (see knowledge._register_name)."""
    return set(filter(None, {names.fold(name), names.fold(names.name_part(name))}))


def _join_atc(book: Dictionary, curated: set[str], rows: list[dict], create: bool) -> None:
    """ATC codes join the ingredient of the same name; with `create`, a substance of the
    hospital chapters (NEW_FROM) that no ingredient names yet becomes one."""
    for row in rows:
        code, name = row["atc_code"], row["atc_name"]
        key = book.find(name)
        if key is None:
            if not (create and code.startswith(NEW_FROM)):
                continue
            key = substance_key(name)
            if not key or names.fold(key) in book.by_fold:
                continue
            book.new(key, source=[SOURCE_ATC + f" ({code} {name})"])
        entry = book.rows[key]
        if code not in entry["atc_codes"] and key not in curated:
            entry["atc_codes"].append(code)
        if name.lower() != key:  # the salt or ester form: "levothyroxine sodium"
            book.add_name(key, name)
            if name.lower() not in entry["aliases"]:
                entry["aliases"].append(name.lower())


def _french_to_english(plain_name: str) -> str:
    """`acide valproique` -> `valproic acid`, `dalteparine sodique` -> `dalteparine`; other
    French INNs fold onto the English ones as they are (`names.fold`)."""
    words = [w for w in plain_name.split() if w not in FRENCH_SALT_WORDS] or plain_name.split()
    if words[0] == "insuline":  # the French names of human insulin preparations
        return "insulin"
    if words and words[0] == "acide" and len(words) > 1:
        rest = " ".join(words[1:]).replace("ique", "ic")
        return f"{rest} acid"
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--who-atc", type=Path, help="full WHO ATC table to re-select from")
    parser.add_argument("--out", type=Path, default=KNOWLEDGE,
                        help="folder for the compiled files (default: the knowledge folder)")
    args = parser.parse_args(argv)
    if args.who_atc:
        select_atc(args.who_atc)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
