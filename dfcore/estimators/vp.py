"""Fisher-vector-product estimators (filled in by the DF-EA work)."""
__all__: list[str] = []
