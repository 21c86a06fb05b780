"""Side panels of the main window: model, data, analysis options, evaluation and fine-tuning."""
