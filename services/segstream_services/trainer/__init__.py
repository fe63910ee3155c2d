"""The trainer: ``segstream finetune`` turns the base encoder into a user-profile model."""
