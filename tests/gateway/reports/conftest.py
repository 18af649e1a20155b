from tests.gateway.conftest import backend, database_url, engine, migrated_url, sessionmaker

__all__ = ["backend", "database_url", "engine", "migrated_url", "sessionmaker"]
