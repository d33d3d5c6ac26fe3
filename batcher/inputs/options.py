"""How to read an input: the command line's input flags, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputOptions:
    """The input flags of ``run`` and ``plan``.

    ``module``: module of rows without a module column (``--module``). ``delimiter``: the CSV
    delimiter (``--delimiter``), else detected. ``record_column`` / ``cadence_column`` /
    ``module_column``: a header named exactly, else found by its aliases. ``cadences``
    (``--cadence``, repeatable) or ``all_cadences``: the input is a record list (no cadence
    column) and each record is un-enrolled from each of these cadences.
    """

    module: str | None = None
    delimiter: str | None = None
    record_column: str | None = None
    cadence_column: str | None = None
    module_column: str | None = None
    cadences: tuple[str, ...] = ()
    all_cadences: bool = False

    @classmethod
    def of(cls, options: InputOptions | str | None) -> InputOptions:
        """``options`` as given; a module name alone stands for ``InputOptions(module=...)``."""
        if isinstance(options, InputOptions):
            return options
        return cls(module=options)
