"""The engine: reads changes, delivers them, queues what fails and replays it."""
