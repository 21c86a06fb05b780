"""Dialogs of the main window: about, pickle trust confirmation and export."""
