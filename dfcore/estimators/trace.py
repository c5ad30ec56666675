"""Fisher-trace estimators (filled in by the DF-TM work)."""
__all__: list[str] = []
