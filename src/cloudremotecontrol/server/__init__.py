"""The CloudRemoteControl server: master API, agent endpoint, event stream."""
