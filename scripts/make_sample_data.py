"""Regenerate sample_data/ (deterministic). Run: .venv/bin/python scripts/make_sample_data.py"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "sample_data"


def main() -> None:
    rnd = random.Random(7)
    OUT.mkdir(exist_ok=True)
    (OUT / "bad").mkdir(exist_ok=True)
    cadences = {
        "Leads": [str(554023000004092000 + i) for i in (8, 9, 10, 11)],
        "Contacts": [str(554023000004093000 + i) for i in (1, 2, 3)],
    }
    rows = []
    for module, cads in cadences.items():
        for r in range(120 if module == "Leads" else 60):
            rid = str(554023000001798000 + r + (0 if module == "Leads" else 5000))
            # families of cadences: most records are in one or two common sets
            k = rnd.choice([1, 1, 2, 2, 3, len(cads)])
            for c in sorted(rnd.sample(cads, k)):
                rows.append((rid, c, module))
    lines = ["Record Id,Cadence Id,Module,Owner"]
    for i, (rid, cid, module) in enumerate(rows):
        if i % 17 == 0:
            rid = f"zcrm_{rid}"  # Zoho's own export format
        lines.append(f"{rid},{cid},{module},ops@example.com")
    # the bad rows an operations list really contains
    lines += [
        "5.54023E+17,554023000004092008,Leads,excel ate this id",
        "554023000001798001,554023000004092008,,no module",
        "55402300000179800x,554023000004092009,Leads,typo",
        # a repeated row, the same person: another Owner would say two records made one id
        f"{rows[0][0]},{rows[0][1]},{rows[0][2]},ops@example.com",
        "554023000001798002,,Leads,no cadence",
    ]
    (OUT / "offboarding.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    clean = [r for r in rows]
    pq.write_table(pa.table({
        "record_id": [r[0] for r in clean], "cadence_id": [r[1] for r in clean],
        "module": [r[2] for r in clean],
    }), OUT / "offboarding.parquet")

    bad = OUT / "bad"
    (bad / "empty.csv").write_bytes(b"")
    (bad / "header_only.csv").write_text("record_id,cadence_id,module\n")
    (bad / "no_usable_columns.csv").write_text("email,campaign\nann@example.com,spring\n")
    (bad / "only_record_column.csv").write_text("record_id\n554023000001798647\n")
    (bad / "latin1.csv").write_bytes(
        "record_id;cadence_id;module\n554023000001798647;554023000004092008;L\xe9ads\n"
        .encode("latin-1"))
    (bad / "ragged.csv").write_text(
        "record_id,cadence_id,module\n554023000001798647,554023000004092008,Leads,extra\n")
    good = pa.table({"record_id": ["554023000001798647"], "cadence_id": ["554023000004092008"],
                     "module": ["Leads"]})
    pq.write_table(good, bad / "truncated.parquet")
    data = (bad / "truncated.parquet").read_bytes()
    (bad / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (bad / "not_really.parquet").write_text("this is a note, not a parquet file\n")
    (bad / "binary_junk.csv").write_bytes(bytes(range(256)) * 4)
    pq.write_table(pa.table({"record_id": [5.54023000001798647e17, 5.54023000001798648e17],
                             "cadence_id": ["554023000004092008"] * 2,
                             "module": ["Leads"] * 2}), bad / "float_ids.parquet")


if __name__ == "__main__":
    main()
