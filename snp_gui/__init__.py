"""Desktop application for Subspace Node Pruning: PySide6 widgets on top of snp_engine."""
