"""Built-in tasks: seeded generators of verifiable problems with reference solutions."""
