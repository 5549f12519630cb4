"""The HTTP layer: app keys, middleware, problem documents, handlers, health, metrics, OpenAPI."""
