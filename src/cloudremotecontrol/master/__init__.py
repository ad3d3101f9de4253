"""The master side: SDK client, CLI commands, scenario runner and providers."""
