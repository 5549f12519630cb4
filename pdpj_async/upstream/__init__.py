"""PDPJ-Br: the HTTP client, its response types and parsing, and the bearer-token providers."""
