"""Bias in Bios from the hub (or a local copy in the hub's layout) for the downstream lens: `--bios NAME|DIR`.

    from distill.eval.lenses.bios_hub import load_hub_bios
    bios = load_hub_bios("LabHC/bias_in_bios")      # train and test splits; dev, if any, is not read

Columns: the text (`hard_text`, or `text` / `bio`), the occupation (`profession`, or `occupation` / `title`)
and `gender`. An integer label is read through the names of its `ClassLabel` feature, never through a guessed
order. LabHC/bias_in_bios itself stores both labels as plain int64 (its dataset card's `dataset_info`), with
the names given only in the card's tables; for that dataset, and only for it, those tables are used
(`CARD_NAMES`, copied from the card). Anything else (an integer column with no names, a -1 "no label", a
label beyond the names, gender names that are not female and male, a missing column or split) is one line.
"""

from __future__ import annotations

from distill.errors import UserError
from distill.eval.lenses.bios_record import GENDER_MAP, OCC_KEYS, TEXT_KEYS, Bios, gender_name

# From the dataset card of LabHC/bias_in_bios (README.md, "Classification labels" and "Sensitive attributes"):
# its parquet files hold these labels as integers without ClassLabel names.
CARD_NAMES = {
    "LabHC/bias_in_bios": {
        "profession": ["accountant", "architect", "attorney", "chiropractor", "comedian", "composer", "dentist",
                       "dietitian", "dj", "filmmaker", "interior_designer", "journalist", "model", "nurse",
                       "painter", "paralegal", "pastor", "personal_trainer", "photographer", "physician", "poet",
                       "professor", "psychologist", "rapper", "software_engineer", "surgeon", "teacher",
                       "yoga_teacher"],
        "gender": ["male", "female"],
    },
}


def load_hub_bios(spec: str):
    """`Bios` from the train and test splits of the dataset `spec` (a hub name or a local folder)."""
    import tempfile
    from pathlib import Path

    if not Path(spec).is_dir():
        return _read(spec, None)
    # A local folder is read into a cache of its own, dropped afterwards: datasets keys the cache of a local
    # folder on its name and card, so an edited copy would otherwise be served from the earlier one.
    with tempfile.TemporaryDirectory(prefix="distill-bios-") as cache:
        return _read(spec, cache)


def _read(spec: str, cache_dir: str | None):
    try:
        import datasets

        ds = datasets.load_dataset(spec, cache_dir=cache_dir)
    except Exception as exc:  # network, unknown name, files that do not fit the card: one user-facing line
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
        raise UserError(f"could not load --bios dataset {spec!r} ({first}); give a JSONL file or 'project'") from exc
    texts, occs, gens, splits = [], [], [], []
    for split in ("train", "test"):
        if split not in ds:
            raise UserError(f"--bios dataset {spec!r} has no {split!r} split (it has {', '.join(ds)})")
        d = ds[split]
        cols = d.column_names
        tcol, ocol = next((k for k in TEXT_KEYS if k in cols), None), next((k for k in OCC_KEYS if k in cols), None)
        if tcol is None or ocol is None or "gender" not in cols:
            raise UserError(f"--bios dataset {spec!r} needs a text ({'/'.join(TEXT_KEYS)}), an occupation "
                            f"({'/'.join(OCC_KEYS)}) and a gender column; its {split!r} split has {cols}")
        where = f"--bios dataset {spec!r} split {split!r}"
        gender_names = _names(d, "gender", spec, where)
        if gender_names is not None and {GENDER_MAP.get(str(g).strip().lower()) for g in gender_names} != {
                "female", "male"}:
            raise UserError(f"{where}: the gender feature's label names are {gender_names}, not female and male "
                            "(or f/m); the lens compares two genders")
        texts += [str(t) for t in d[tcol]]
        occs += _labels(d[ocol], _names(d, ocol, spec, where), f"{where} column {ocol!r}")
        gens += [gender_name(g, where) for g in _labels(d["gender"], gender_names, f"{where} column 'gender'")]
        splits += [split] * len(d)
    return Bios(texts, occs, gens, splits, spec)


def _names(d, col: str, spec: str, where: str) -> list[str] | None:
    """The label names of column `col`: its ClassLabel feature's names, the dataset card's for a dataset in
    CARD_NAMES, or None for a column of strings. An integer column with no names is refused."""
    feature = d.features[col]
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    dtype = getattr(feature, "dtype", None)
    if dtype is not None and ("int" in str(dtype)):
        card = CARD_NAMES.get(spec, {}).get(col)
        if card is not None:
            return card
        raise UserError(f"{where}: column {col!r} holds integers with no label names (not a ClassLabel feature), "
                        "so which number is which cannot be read; give a dataset whose labels are ClassLabel "
                        "features, or a JSONL file with names")
    return None


def _labels(values, names: list[str] | None, where: str) -> list[str]:
    """Each value as its name (`names[value]`), or as text when the column holds text."""
    if names is None:
        return [str(v) for v in values]
    out = []
    for n, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(names):
            what = "no label (-1)" if v == -1 else f"label {v!r}, beyond its {len(names)} names"
            raise UserError(f"{where} row {n} has {what}; drop or label those rows")
        out.append(names[v])
    return out
