"""Generated (module, record, cadence) inputs for the planner benchmark, cached under bench/data/.

Ids are 19-digit strings like Zoho's. Rows are shuffled: real files come in any order, and a
shuffled one is the hardest for hashing.

Shapes (``n_pairs`` is met exactly; records and cadences follow from the shape):
  one_cadence   every record in the same single cadence
  same_four     every record in the same 4 cadences
  blocks_of_100 disjoint blocks of 100 records, each block sharing 5 cadences (8 such sets)
  families      ~3 pairs per record: 40 cadences in 8 families of 5 (sequences); a record is in 1-3
                families, and in each in all steps, a prefix of them, or a few; two modules
  sparse        records drawn at random into 40 cadences (~3.3 cadences a record, no structure)
  random_sets   ~3.3 cadences a record drawn from 40 of uneven popularity, and 4% of the rows
                repeat an earlier pair (a file exported twice over): n_pairs counts the rows
  swapped       random_sets with the record and cadence columns swapped, as a file whose headers
                were mixed up reads: 40 "records" and ~0.3 * n_pairs "cadences"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parent / "data"
SHAPES = ("one_cadence", "same_four", "blocks_of_100", "families", "sparse")
#: beyond the quality table's shapes: rows that repeat pairs, and ids in the wrong columns
MORE_SHAPES = ("random_sets", "swapped")
REPEATED = 0.04  # random_sets: the share of rows that repeat an earlier pair
N_CADENCES = 40
_RECORD_BASE = 5_540_230_000_000_000_000
_CADENCE_BASE = 5_540_230_000_004_092_008


def _ids(numbers: np.ndarray, base: int) -> pa.Array:
    return pc.cast(pa.array(base + numbers.astype(np.int64)), pa.string())


def _record_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct 12-digit offsets, in random order (ids are not sequential in real files)."""
    return rng.choice(10**12, size=n, replace=False)


def _table(rng: np.random.Generator, rec: np.ndarray, cad: np.ndarray, module: np.ndarray,
           module_names: list[str], n_pairs: int) -> pa.Table:
    order = rng.permutation(len(rec))[:n_pairs]
    rec, cad, module = rec[order], cad[order], module[order]
    record_ids = _ids(_record_numbers(rng, int(rec.max()) + 1), _RECORD_BASE)
    cadence_ids = _ids(np.arange(N_CADENCES) * 7919, _CADENCE_BASE)
    return pa.table({
        "record_id": record_ids.take(pa.array(rec)),
        "cadence_id": cadence_ids.take(pa.array(cad)),
        "module": pa.array(np.array(module_names)[module]),
    })


def _families(rng: np.random.Generator, n_pairs: int) -> tuple[np.ndarray, ...]:
    n_records = int(n_pairs / 3.6) + 1000
    n_fam = 1 + (rng.random(n_records) < 0.15) + (rng.random(n_records) < 0.03)
    module = (rng.random(n_records) < 0.25).astype(np.int64)  # 0 Leads (families 0-5), 1 Contacts
    span = np.where(module == 0, 6, 2)
    first = np.where(module == 0, 0, 6)
    n_fam = np.minimum(n_fam, span)
    # distinct families per record: random keys, the n_fam smallest within the module's span
    keys = rng.random((n_records, 6))
    keys[np.arange(6)[None, :] >= span[:, None]] = 2.0
    fam = np.argsort(keys, axis=1)[:, :3] + first[:, None]
    kind = rng.random((n_records, 3))
    prefix = (1 << rng.integers(1, 5, size=(n_records, 3))) - 1
    subset = np.where(kind < 0.3, 31, np.where(kind < 0.75, prefix,
                                               rng.integers(1, 32, size=(n_records, 3))))
    subset[np.arange(3)[None, :] >= n_fam[:, None]] = 0
    bits = (subset[:, :, None] >> np.arange(5)) & 1
    r, j, b = np.nonzero(bits)
    return r, fam[r, j] * 5 + b, module[r]


def _pairs(shape: str, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    if shape == "one_cadence":
        r = np.arange(n)
        return r, np.zeros(n, np.int64), np.zeros(n, np.int64)
    if shape == "same_four":
        r = np.repeat(np.arange(-(-n // 4)), 4)
        return r, np.tile(np.arange(4), len(r) // 4), np.zeros(len(r), np.int64)
    if shape == "blocks_of_100":
        n_rec = -(-n // 500) * 100
        r = np.repeat(np.arange(n_rec), 5)
        block_set = (np.arange(n_rec) // 100) % (N_CADENCES // 5)
        c = block_set[r] * 5 + np.tile(np.arange(5), n_rec)
        return r, c, np.zeros(len(r), np.int64)
    if shape == "families":
        return _families(rng, n)
    if shape == "sparse":
        n_rec = max(1, int(n / 3.3))
        key = np.unique(rng.integers(0, n_rec * N_CADENCES, size=int(n * 1.2)))
        key = key[rng.permutation(len(key))[:n]]
        return key // N_CADENCES, key % N_CADENCES, np.zeros(len(key), np.int64)
    if shape in MORE_SHAPES:
        return _random_sets(rng, n)
    raise ValueError(f"unknown shape {shape!r}; one of {', '.join(SHAPES + MORE_SHAPES)}")


def _random_sets(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """n rows: distinct pairs of ~3.3 cadences a record (cadence i drawn with weight
    1/sqrt(i+1)), then REPEATED of the rows copies of some of them."""
    n_distinct = n - int(n * REPEATED)
    n_rec = max(1, int(n_distinct / 3.2))
    weight = 1 / np.sqrt(np.arange(1, N_CADENCES + 1))
    draws = int(n_distinct * 1.25)
    key = np.unique(rng.integers(0, n_rec, size=draws) * N_CADENCES
                    + rng.choice(N_CADENCES, size=draws, p=weight / weight.sum()))
    key = key[rng.permutation(len(key))[:n_distinct]]
    key = np.concatenate([key, key[rng.integers(0, len(key), size=n - len(key))]])
    return key // N_CADENCES, key % N_CADENCES, np.zeros(len(key), np.int64)


def generate(shape: str, n_pairs: int, seed: int = 0) -> pa.Table:
    """A shuffled table of exactly n_pairs distinct pairs (fewer only if the shape cannot)."""
    rng = np.random.default_rng(seed)
    r, c, m = _pairs(shape, rng, n_pairs)
    table = _table(rng, r, c, m, ["Leads", "Contacts"], n_pairs)
    if shape == "swapped":
        return table.rename_columns(["cadence_id", "record_id", "module"]).select(
            ["record_id", "cadence_id", "module"])
    return table


def ensure_files(shape: str, n_pairs: int, seed: int = 0, *, csv: bool = True
                 ) -> tuple[Path, ...]:
    """(parquet, csv) paths of the shape — (parquet,) without ``csv`` — generated once and
    cached in bench/data/."""
    DATA.mkdir(parents=True, exist_ok=True)
    stem = DATA / f"{shape}-{n_pairs}-s{seed}"
    parquet, csv_path = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    table = None
    if not parquet.exists():
        table = generate(shape, n_pairs, seed)
        pq.write_table(table, parquet.with_suffix(".tmp"))
        parquet.with_suffix(".tmp").replace(parquet)
    if not csv:
        return (parquet,)
    if not csv_path.exists():
        table = pq.read_table(parquet) if table is None else table
        pacsv.write_csv(table, csv_path.with_suffix(".tmpcsv"))
        csv_path.with_suffix(".tmpcsv").replace(csv_path)
    return parquet, csv_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=SHAPES + MORE_SHAPES)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in ensure_files(args.shape, args.pairs, args.seed):
        print(path)


if __name__ == "__main__":
    main()
