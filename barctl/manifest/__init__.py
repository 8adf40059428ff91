"""The manifest: safe YAML loading, the JSON schema (with every default), semantic rules, the typed Recipe."""
