"""The writer's domain (tasks, content, images): what happens to content after stage 7."""
