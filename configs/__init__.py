"""tinylm's Hydra configs: installed as the package ``tinylm.configs`` (see pyproject.toml)."""
