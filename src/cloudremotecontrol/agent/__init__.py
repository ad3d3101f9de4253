"""The agent that runs on each machine as a system service."""
