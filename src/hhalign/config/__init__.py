"""The run config: its schema as typed dataclasses (``schema``) and how YAML files, presets and ``--set``
overrides become one (``files``)."""
