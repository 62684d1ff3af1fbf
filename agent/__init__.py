"""andon-agent: polls machines' PLCs for tool-wear and fault signals and pushes alerts upstream."""

__version__ = "0.1.0"
