"""Post-call CRM push: the engine, the core and its adapters (shipped as a Lambda layer)."""
