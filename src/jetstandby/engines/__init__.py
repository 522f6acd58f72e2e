"""Reference engines. Pure and deterministic; they import nothing above ``jetstandby.engine``."""
