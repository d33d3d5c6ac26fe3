"""The reader: CSV or Parquet → one normalised row per input data row (valid pair, ``invalid``
or ``duplicate``), columnar because inputs reach tens of millions of rows.

Modules: ``formats`` (file kinds), ``columns`` (header roles), ``ids`` (id and module rules),
``codes`` (hashing and repeats), ``scan`` (the pass over a file), ``coded`` (the rows'
verdicts, compact).
"""

from .coded import DUPLICATE, INVALID, VALID
from .ids import canonical_module
from .options import InputOptions
from .records import RecordList
from .scan import (
    CHANGED_WHILE_READ,
    InputScan,
    InputTable,
    PairCodes,
    check_input,
    file_fingerprint,
    file_stamp,
    hidden_line,
    module_named_line,
    read_input,
    rounding_line,
    scan_input,
    sheet_lines,
    stamped_fingerprint,
    swapped_columns_line,
    unusual_line,
)

__all__ = ["CHANGED_WHILE_READ", "DUPLICATE", "INVALID", "VALID", "InputOptions", "InputScan",
           "InputTable", "PairCodes", "RecordList", "canonical_module", "check_input",
           "file_fingerprint", "file_stamp", "hidden_line", "module_named_line", "read_input",
           "rounding_line", "scan_input", "sheet_lines", "stamped_fingerprint",
           "swapped_columns_line", "unusual_line"]
