"""The presets (YAML), shipped inside the package as ``hhalign.configs``: ``hhalign run tiny`` finds them in a wheel."""
