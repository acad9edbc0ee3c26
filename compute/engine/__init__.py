"""The engine and its pipelines: built from the settings, started, supervised, stopped."""
