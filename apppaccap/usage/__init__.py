"""Usage accounting: bytes per program × remote endpoint × direction, no packets stored."""
