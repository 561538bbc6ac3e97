"""The one exception the spec layer raises: it always says where the problem is."""


class SpecError(ValueError):
    """A problem in a layer spec, located by file, line and column (1-based); file is None
    when the problem is in no file (an unknown layer name)."""

    def __init__(self, message: str, file: str | None = "<spec>", line: int | None = None,
                 col: int | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.file is None:             # not about any text (a layer name, say)
            return self.message
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        return f"{where}: {self.message}"


class DerivationError(ValueError):
    """The spec is valid but its gradients cannot be derived in closed form."""
