"""How to read an input: the command line's input flags, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError


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

    def __post_init__(self) -> None:
        """UsageError for a value of another kind (a library caller may hand anything): one
        string of cadences would be read a character at a time."""
        for name in ("module", "delimiter", "record_column", "cadence_column", "module_column"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UsageError(f"{name} must be text, not {value!r}")
        if not isinstance(self.cadences, tuple | list) or not all(
                isinstance(c, str) for c in self.cadences):
            raise UsageError(f"cadences must be a list of cadence ids (text), not "
                             f"{self.cadences!r}")
        object.__setattr__(self, "cadences", tuple(self.cadences))
        if type(self.all_cadences) is not bool:
            raise UsageError(f"all_cadences must be True or False, not {self.all_cadences!r}")

    @classmethod
    def of(cls, options: InputOptions | str | None) -> InputOptions:
        """``options`` as given; a module name alone stands for ``InputOptions(module=...)``."""
        if isinstance(options, InputOptions):
            return options
        return cls(module=options)
