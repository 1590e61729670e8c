"""asv benchmarks of unitary_update.  Set ``UU_ASV_QUICK=1`` for the small grid that CI runs."""
